//! Scheduling, after every input: which hosts start, when a wave is
//! over and what comes between waves, when a spent failure budget or an
//! abort ends the rollout, and the rollback of touched hosts newest first.

use picket_model::rollout::Pause;

use super::Engine;
use super::Output;
use crate::state::{Ending, HostState, Phase, RolloutState, StepRef};

impl Engine {
    pub(super) fn start_rollback(&mut self) {
        self.p.rollbacks += 1;
        self.p.state = RolloutState::RollingBack;
        self.p.ending = None;
        self.p.pause_until = None;
        for h in &mut self.p.hosts {
            h.rollback_failed = false;
            if h.state == HostState::Pending {
                h.state = HostState::Skipped;
            }
        }
    }

    /// Hosts that a rollback touches, newest first: every host that began.
    fn rollback_order(&self) -> Vec<usize> {
        let mut v: Vec<(u64, usize)> = self
            .p
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.started_order.map(|o| (o, i)))
            .collect();
        v.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        v.into_iter().map(|(_, i)| i).collect()
    }

    fn running(&self) -> usize {
        self.p
            .hosts
            .iter()
            .filter(|h| h.current.is_some() || h.recheck_at.is_some())
            .count()
    }

    fn finish(&mut self, state: RolloutState, now: i64, out: &mut Vec<Output>) {
        self.p.state = state;
        self.p.finished_ms = Some(now);
        let kind = match state {
            RolloutState::Succeeded => "rollout_succeeded",
            RolloutState::RolledBack => "rollout_rolled_back",
            RolloutState::Aborted => "rollout_aborted",
            _ => "rollout_failed",
        };
        out.push(Output::Finished { kind });
    }

    /// Starts what may start and settles what is over, after any change.
    pub(super) fn advance(&mut self, now: i64, out: &mut Vec<Output>) {
        match self.p.state {
            RolloutState::RollingBack => self.advance_rollback(now, out),
            RolloutState::Running | RolloutState::Paused => self.advance_rollout(now, out),
            _ => {}
        }
    }

    fn advance_rollout(&mut self, now: i64, out: &mut Vec<Output>) {
        let total = self.p.hosts.len();
        let failed = self.p.hosts.iter().filter(|h| h.state.is_failure()).count();
        if self.p.ending.is_none() && failed > self.spec.max_failures.of(total) {
            self.p.ending = Some(Ending::Failure);
        }
        if let Some(ending) = self.p.ending {
            // Nothing new starts; running hosts finish.
            for h in &mut self.p.hosts {
                if h.state == HostState::Pending {
                    h.state = HostState::Skipped;
                }
            }
            if self.running() > 0 {
                return;
            }
            match ending {
                Ending::Abort => self.finish(RolloutState::Aborted, now, out),
                Ending::Failure if self.spec.auto_rollback => {
                    self.start_rollback();
                    self.advance_rollback(now, out);
                }
                Ending::Failure => self.finish(RolloutState::Failed, now, out),
            }
            return;
        }
        if self.p.state == RolloutState::Paused || self.p.pause_until.is_some() {
            return;
        }
        loop {
            let wave = self.p.wave;
            let in_wave: Vec<usize> = (0..total)
                .filter(|&i| self.p.hosts[i].wave == wave)
                .collect();
            let limit = self.spec.max_parallel.at_least_one(in_wave.len());
            let mut running = in_wave
                .iter()
                .filter(|&&i| self.p.hosts[i].state == HostState::Running)
                .count();
            for &i in &in_wave {
                if running >= limit {
                    break;
                }
                if self.p.hosts[i].state != HostState::Pending {
                    continue;
                }
                let first = StepRef {
                    phase: Phase::Deploy,
                    index: 0,
                    attempt: 1,
                };
                let order = self.p.next_order;
                self.p.next_order += 1;
                let h = &mut self.p.hosts[i];
                h.state = HostState::Running;
                h.started_ms = Some(now);
                h.started_order = Some(order);
                h.current = Some(first);
                let h = h.clone();
                out.extend(self.dispatch(&h, first));
                running += 1;
            }
            let wave_done = in_wave.iter().all(|&i| {
                !matches!(
                    self.p.hosts[i].state,
                    HostState::Pending | HostState::Running
                )
            });
            if !wave_done {
                return;
            }
            let last = !self.p.hosts.iter().any(|h| h.wave > wave);
            if last {
                self.finish(RolloutState::Succeeded, now, out);
                return;
            }
            match self.spec.pause_between_waves {
                Pause::Approval => {
                    self.p.state = RolloutState::AwaitingApproval;
                    return;
                }
                Pause::Wait(d) if !d.is_zero() => {
                    let ms = picket_model::millis(d);
                    self.p.pause_until = Some(now.saturating_add(ms));
                    return;
                }
                Pause::Wait(_) => self.p.wave += 1,
            }
        }
    }

    fn advance_rollback(&mut self, now: i64, out: &mut Vec<Output>) {
        let order = self.rollback_order();
        let limit = self.spec.max_parallel.at_least_one(order.len());
        let mut running = self.running();
        let attempt = self.p.rollbacks;
        for i in order {
            if running >= limit {
                break;
            }
            let h = &self.p.hosts[i];
            let done = h.state == HostState::RolledBack || h.rollback_failed;
            let in_rollback = h
                .current
                .is_some_and(|c| c.phase == Phase::Rollback && c.attempt == attempt);
            if done || in_rollback {
                continue;
            }
            let first = StepRef {
                phase: Phase::Rollback,
                index: 0,
                attempt,
            };
            let h = &mut self.p.hosts[i];
            h.current = Some(first);
            h.recheck_at = None;
            let h = h.clone();
            out.extend(self.dispatch(&h, first));
            running += 1;
        }
        if self.running() > 0 {
            return;
        }
        let failed = self.p.hosts.iter().any(|h| h.rollback_failed);
        let state = if failed {
            RolloutState::Failed
        } else {
            RolloutState::RolledBack
        };
        self.finish(state, now, out);
    }
}
