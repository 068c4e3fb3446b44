//! The admin service's deploy calls: `Run`, and the rollout calls. Each
//! change needs the operator role and is audited with its id; the work is
//! the rollout driver's (`rollout::driver`) and `run`'s.

use std::time::Duration;

use picket_model::rollout::RawSpec;
use picket_model::{Role, Selector};
use picket_proto::v1;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::admin::{AdminSvc, Stream};
use super::auth::require;
use super::status::{internal, store_error};
use crate::rollout::driver::{Action, DriverError};
use picket_rollout::view::{View, wave_state};

/// How long `run` gives each host by default (as an exec step).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

pub fn status(e: DriverError) -> Status {
    match e {
        DriverError::NotFound(_) => Status::not_found(e.to_string()),
        DriverError::Spec(_) => Status::invalid_argument(e.to_string()),
        DriverError::Refused(_) => Status::failed_precondition(e.to_string()),
        DriverError::Store(_) | DriverError::Gone => internal(e),
        DriverError::NotLeader(_) => Status::unavailable(e.to_string()),
    }
}

pub fn rollout(v: &View) -> v1::Rollout {
    let waves = v
        .waves()
        .into_iter()
        .map(|(name, hosts)| v1::RolloutWave {
            name,
            state: wave_state(&hosts).to_string(),
            hosts: hosts
                .iter()
                .map(|h| {
                    let mut steps: Vec<v1::RolloutStep> = h
                        .steps
                        .iter()
                        .map(|s| v1::RolloutStep {
                            name: s.name.clone(),
                            state: s.state.as_str().to_string(),
                            exit_code: s.exit_code,
                            duration_ms: s.duration_ms,
                            output: s.output.clone(),
                            phase: s.at.phase.as_str().to_string(),
                        })
                        .collect();
                    if let Some(at) = h.current {
                        steps.push(v1::RolloutStep {
                            name: v.step_label(at),
                            state: "running".into(),
                            phase: at.phase.as_str().to_string(),
                            ..Default::default()
                        });
                    }
                    v1::RolloutHost {
                        name: h.name.clone(),
                        state: h.state.as_str().to_string(),
                        steps,
                        last_line: v.lines.get(&h.name).cloned().unwrap_or_default(),
                    }
                })
                .collect(),
        })
        .collect();
    v1::Rollout {
        id: v.p.id.clone(),
        name: v.name().to_string(),
        state: v.p.state.as_str().to_string(),
        created_unix_ms: v.p.created_ms,
        finished_unix_ms: v.p.finished_ms.unwrap_or(0),
        waves,
    }
}

impl AdminSvc {
    pub(super) async fn do_run(
        &self,
        req: Request<v1::RunRequest>,
    ) -> Result<Response<Stream<v1::RunResult>>, Status> {
        let st = &self.state;
        let caller = require(&req, &st.audit, Role::Operator, "run", "")?;
        let r = req.into_inner();
        let selector: Selector = r
            .selector
            .parse()
            .map_err(|e| Status::invalid_argument(format!("--selector: {e}")))?;
        if r.argv.first().is_none_or(|a| a.is_empty()) {
            return Err(Status::invalid_argument("no command given (after --)"));
        }
        if let Some(u) = &r.user {
            super::grants::valid_user(u)
                .map_err(|e| Status::invalid_argument(format!("--user: {e}")))?;
        }
        let users: Vec<String> = r.user.iter().cloned().collect();
        super::grants::check(st, &caller, &users, "run", "").await?;
        let agents = st
            .store
            .blocking(|s| s.agents())
            .await
            .map_err(store_error)?;
        // A scoped user selects among the hosts in scope only.
        let scope = super::scope::Scope::of(st, &caller)?;
        let hosts: Vec<String> = selected(&agents, &selector)
            .filter(|a| scope.holds(a))
            .map(|a| a.name.clone())
            .collect();
        if hosts.is_empty() {
            let yours = if scope.is_all() { "" } else { " in your scope" };
            return Err(Status::invalid_argument(format!(
                "--selector {selector} matches no host{yours}"
            )));
        }
        let id = st
            .store
            .blocking(|s| s.new_run_id("run"))
            .await
            .map_err(store_error)?;
        st.audit.record(
            &caller.actor(),
            "run",
            &id,
            &format!("ok: {} host(s): {}", hosts.len(), r.argv.join(" ")),
        );
        let spec = crate::run::RunSpec {
            selector,
            max_parallel: r.max_parallel as usize,
            timeout: match r.timeout_ms {
                0 => RUN_TIMEOUT,
                ms => Duration::from_millis(ms),
            },
            argv: r.argv,
            user: r.user,
        };
        let rx = crate::run::start(st.steps.clone(), id.clone(), hosts, spec, &st.tasks);
        let out = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |h| {
            Ok(v1::RunResult {
                run: id.clone(),
                host: h.host,
                state: h.state.to_string(),
                exit_code: h.exit_code,
                duration_ms: h.duration_ms,
                output: h.output,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    pub(super) async fn do_create_rollout(
        &self,
        req: Request<v1::CreateRolloutRequest>,
    ) -> Result<Response<v1::CreateRolloutResponse>, Status> {
        let st = &self.state;
        let caller = require(&req, &st.audit, Role::Operator, "rollout.create", "")?;
        let spec = RawSpec::from(req.into_inner().spec.unwrap_or_default());
        let name = spec.name.clone().unwrap_or_default();
        // A rollout that would reach a host outside the caller's scope is
        // refused whole.
        let scope = super::scope::Scope::of(st, &caller)?;
        if !scope.is_all() {
            let selector: Selector = spec
                .selector
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|e| Status::invalid_argument(format!("selector: {e}")))?;
            let agents = st.store.agents().map_err(store_error)?;
            let reached: Vec<String> = selected(&agents, &selector)
                .map(|a| a.name.clone())
                .collect();
            scope.confine(st, &caller, &reached, "rollout.create", "")?;
        }
        let mut users: Vec<String> = spec
            .step
            .iter()
            .chain(&spec.health)
            .chain(&spec.rollback)
            .filter_map(|s| s.user.clone())
            .collect();
        users.sort_unstable();
        users.dedup();
        super::grants::check(st, &caller, &users, "rollout.create", "").await?;
        match st.rollouts.create(spec).await {
            Ok(id) => {
                st.audit.record(
                    &caller.actor(),
                    "rollout.create",
                    &id,
                    &format!("ok: {name}"),
                );
                Ok(Response::new(v1::CreateRolloutResponse { id }))
            }
            Err(e) => {
                st.audit.record(
                    &caller.actor(),
                    "rollout.create",
                    "",
                    &format!("error: {e}"),
                );
                Err(status(e))
            }
        }
    }

    pub(super) async fn do_act_on_rollout(
        &self,
        req: Request<v1::RolloutActionRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        let st = &self.state;
        let r = req.get_ref();
        let action = picket_proto::convert::rollout_action(r.action)
            .map_err(|_| Status::invalid_argument("action is unspecified or unknown"))?;
        let verb = match action {
            Action::Pause => "rollout.pause",
            Action::Resume => "rollout.resume",
            Action::Approve => "rollout.approve",
            Action::Abort => "rollout.abort",
            Action::Rollback => "rollout.rollback",
        };
        let id = r.id.clone();
        let caller = require(&req, &st.audit, Role::Operator, verb, &id)?;
        // Acting on a rollout (approving a wave above all) is confined as
        // creating it is.
        let scope = super::scope::Scope::of(st, &caller)?;
        if !scope.is_all() {
            let v = st.rollouts.get(id.clone()).await.map_err(status)?;
            let hosts: Vec<String> = v.p.hosts.iter().map(|h| h.name.clone()).collect();
            scope.confine(st, &caller, &hosts, verb, &id)?;
        }
        match st.rollouts.act(id.clone(), action).await {
            Ok(v) => {
                st.audit.record(&caller.actor(), verb, &id, "ok");
                Ok(Response::new(rollout(&v)))
            }
            Err(e) => {
                st.audit
                    .record(&caller.actor(), verb, &id, &format!("error: {e}"));
                Err(status(e))
            }
        }
    }

    pub(super) async fn do_list_rollouts(
        &self,
        req: Request<v1::ListRolloutsRequest>,
    ) -> Result<Response<v1::ListRolloutsResponse>, Status> {
        require(&req, &self.state.audit, Role::Viewer, "rollout.list", "")?;
        let all = self.state.rollouts.list().await.map_err(status)?;
        Ok(Response::new(v1::ListRolloutsResponse {
            rollouts: all.iter().map(rollout).collect(),
        }))
    }

    pub(super) async fn do_get_rollout(
        &self,
        req: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        require(&req, &self.state.audit, Role::Viewer, "rollout.status", "")?;
        let v = self
            .state
            .rollouts
            .get(req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(rollout(&v)))
    }

    pub(super) async fn do_watch_rollout(
        &self,
        req: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<Stream<v1::Rollout>>, Status> {
        require(&req, &self.state.audit, Role::Viewer, "rollout.watch", "")?;
        let id = req.into_inner().id;
        let mut rx = self.state.rollouts.watch(id).await.map_err(status)?;
        let shutdown = self.state.shutdown.clone();
        let out = async_stream(move |tx| async move {
            loop {
                let v = rx.borrow_and_update().clone();
                let done = v.p.state.is_finished();
                if tx.send(Ok(rollout(&v))).await.is_err() || done {
                    return;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(out))
    }

    /// The newest rollout that touched `host`, for `agents show`.
    pub(super) async fn last_rollout(&self, host: &str) -> Option<v1::LastRollout> {
        let last = self
            .state
            .rollouts
            .last_for(host.to_string())
            .await
            .ok()??;
        Some(v1::LastRollout {
            id: last.id,
            name: last.name,
            state: last.state.to_string(),
            host_state: last.host_state.to_string(),
        })
    }
}

/// A stream fed by a task (`f` gets the sender).
fn async_stream<T, F, Fut>(f: F) -> Stream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The hosts `selector` reaches now: enrolled, not revoked, matched by
/// their assigned labels and name (`run`, and a rollout's scope check).
fn selected<'a>(
    agents: &'a [picket_store::AgentRecord],
    selector: &'a Selector,
) -> impl Iterator<Item = &'a picket_store::AgentRecord> {
    agents
        .iter()
        .filter(|a| a.revoked_ms.is_none() && selector.matches_host(&a.name, &a.labels()))
}
