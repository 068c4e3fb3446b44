//! The `Sim`: the fleet and the clock around one engine, for the tests.

use std::collections::{BTreeMap, BTreeSet};

use picket_model::Labels;
use picket_model::rollout::RawSpec;

use super::super::*;

pub(super) const STEP_MS: i64 = 1_000;

/// The reference fleet.
pub(super) fn fleet() -> Vec<(String, Labels)> {
    [
        ("vm-prod", "prod"),
        ("vm-staging", "staging"),
        ("vm-monitor", "monitor"),
        ("vm-security", "prod"),
        ("vm-devops", "prod"),
    ]
    .into_iter()
    .map(|(n, r)| {
        (
            n.to_string(),
            Labels::from([("role".to_string(), r.to_string())]),
        )
    })
    .collect()
}

pub(super) fn spec(extra: &str) -> RawSpec {
    let text = format!(
        r#"name = "app v2"
selector = "role in (staging,prod)"
{extra}
[[wave]]
name = "staging"
selector = "role=staging"

[[wave]]
name = "prod"
selector = "role=prod"

[[step]]
name = "deploy"
exec = ["/opt/app/deploy.sh", "v2"]

[[health]]
http = "http://127.0.0.1:8000/health"

[[rollback]]
exec = ["/opt/app/deploy.sh", "v1"]
"#
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) struct Sim {
    pub(super) engine: Engine,
    pub(super) now: i64,
    /// Steps running on agents: when they finish, where, which.
    pub(super) in_flight: Vec<(i64, String, StepRef)>,
    /// What each agent's ledger holds: a step is run once, ever.
    pub(super) ledger: BTreeMap<(String, StepRef), StepResult>,
    /// Steps in the order they ran (host, phase, index).
    pub(super) ran: Vec<(String, Phase, usize)>,
    pub(super) fail: BTreeSet<(String, Phase)>,
    pub(super) away: BTreeSet<String>,
    pub(super) finished: Vec<&'static str>,
    pub(super) most_running: usize,
    pub(super) restart_every_input: bool,
}

impl Sim {
    pub(super) fn new(raw: RawSpec) -> Sim {
        let spec = raw.check().unwrap();
        let fleet = fleet();
        let plan = spec
            .plan(fleet.iter().map(|(n, l)| (n.as_str(), l)))
            .unwrap();
        let engine = Engine::create("r1".into(), raw, plan, 0).unwrap();
        Sim {
            engine,
            now: 0,
            in_flight: Vec::new(),
            ledger: BTreeMap::new(),
            ran: Vec::new(),
            fail: BTreeSet::new(),
            away: BTreeSet::new(),
            finished: Vec::new(),
            most_running: 0,
            restart_every_input: false,
        }
    }

    pub(super) fn input(&mut self, i: Input) -> Result<(), Refused> {
        let out = self.engine.handle(i, self.now)?;
        self.apply(out);
        if self.restart_every_input {
            self.restart();
        }
        Ok(())
    }

    /// The driver's side: persist first, then dispatch to the agents.
    pub(super) fn apply(&mut self, out: Vec<Output>) {
        let acts = out.iter().any(|o| !matches!(o, Output::Persist));
        if acts {
            assert_eq!(
                out.first(),
                Some(&Output::Persist),
                "persist before acting: {out:?}"
            );
        }
        for o in out {
            match o {
                Output::Persist => {}
                Output::Dispatch { host, at, .. } => self.dispatch(host, at),
                Output::Cancel { host, at } => {
                    self.in_flight.retain(|(_, h, a)| !(*h == host && *a == at));
                }
                Output::Finished { kind } => self.finished.push(kind),
            }
        }
        let running: BTreeSet<&String> = self.in_flight.iter().map(|(_, h, _)| h).collect();
        self.most_running = self.most_running.max(running.len());
    }

    /// An agent receives a step: runs it unless its ledger has it (then
    /// the recorded result is the answer), or holds it while away.
    pub(super) fn dispatch(&mut self, host: String, at: StepRef) {
        if self
            .in_flight
            .iter()
            .any(|(_, h, a)| *h == host && *a == at)
        {
            return;
        }
        if let Some(r) = self.ledger.get(&(host.clone(), at)).cloned() {
            self.in_flight.push((self.now, host, at));
            let _ = r;
            return;
        }
        self.in_flight.push((self.now + STEP_MS, host, at));
    }

    pub(super) fn restart(&mut self) {
        let p = self.engine.persisted().clone();
        self.engine = Engine::restore(p).unwrap();
        let out = self.engine.resume();
        for o in out {
            if let Output::Dispatch { host, at, .. } = o {
                self.dispatch(host, at);
            }
        }
    }

    pub(super) fn go_away(&mut self, host: &str) {
        self.away.insert(host.to_string());
        self.input(Input::HostDisconnected(host.into())).unwrap();
    }

    pub(super) fn come_back(&mut self, host: &str) {
        self.away.remove(host);
        self.input(Input::HostConnected(host.into())).unwrap();
    }

    /// Runs until nothing is in flight on a present host and no deadline
    /// is set (or a limit of simulated time passes).
    pub(super) fn run_until_idle(&mut self) {
        for _ in 0..10_000 {
            let next_step = self
                .in_flight
                .iter()
                .filter(|(_, h, _)| !self.away.contains(h))
                .map(|(t, _, _)| *t)
                .min();
            let next = match (next_step, self.engine.next_deadline()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => return,
                },
            };
            self.now = self.now.max(next);
            if next_step == Some(next) {
                let i = self
                    .in_flight
                    .iter()
                    .position(|(t, h, _)| *t == next && !self.away.contains(h))
                    .unwrap();
                let (_, host, at) = self.in_flight.remove(i);
                let result = match self.ledger.get(&(host.clone(), at)) {
                    Some(r) => r.clone(),
                    None => {
                        let ok = !self.fail.contains(&(host.clone(), at.phase));
                        let r = StepResult {
                            state: if ok {
                                StepState::Succeeded
                            } else {
                                StepState::Failed
                            },
                            exit_code: Some(if ok { 0 } else { 1 }),
                            duration_ms: STEP_MS as u64,
                            output: format!("{host} {:?} {}", at.phase, at.index),
                        };
                        self.ran.push((host.clone(), at.phase, at.index));
                        self.ledger.insert((host.clone(), at), r.clone());
                        r
                    }
                };
                self.input(Input::StepFinished {
                    host,
                    step: at,
                    result,
                })
                .unwrap();
            } else {
                self.input(Input::Tick).unwrap();
            }
        }
        panic!("not idle after 10,000 events");
    }

    pub(super) fn host(&self, name: &str) -> HostState {
        self.engine
            .hosts()
            .iter()
            .find(|h| h.name == name)
            .unwrap()
            .state
    }

    pub(super) fn states(&self) -> Vec<(String, HostState)> {
        self.engine
            .hosts()
            .iter()
            .map(|h| (h.name.clone(), h.state))
            .collect()
    }

    /// The hosts that ran `phase`, in order.
    pub(super) fn ran(&self, phase: Phase) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for (h, p, _) in &self.ran {
            if *p == phase && v.last() != Some(&h.as_str()) {
                v.push(h);
            }
        }
        v
    }
}
