//! The agents of the admin service: `agents list|show|revoke|forget` and
//! `agents label NAME k=v... k-...` (an admin sets and removes a host's
//! labels, the only ones, with those fixed at enrollment, that selectors
//! match: SPEC §4; audited with the change). A scoped user sees the hosts
//! in scope only.

use picket_model::{Role, validate_label};
use picket_proto::v1;
use picket_store::Forget;
use tonic::{Request, Response, Status};

use super::admin::AdminSvc;
use super::auth::require;
use super::scope::Scope;
use super::status::{bad_input, store_error};
use picket_clock::now_ms;
use picket_store::messages as convert;

/// The audit's account of a change: `env=prod,team-`.
fn change(r: &v1::LabelAgentRequest) -> String {
    let set = r.set.iter().map(|(k, v)| format!("{k}={v}"));
    let removed = r.remove.iter().map(|k| format!("{k}-"));
    set.chain(removed).collect::<Vec<_>>().join(",")
}

impl AdminSvc {
    fn agent_view(&self, name: &str) -> Result<v1::Agent, Status> {
        let rec = self
            .state
            .store
            .agent(name)
            .map_err(store_error)?
            .ok_or_else(|| Status::not_found(format!("no agent named {name}")))?;
        Ok(self.view(&rec))
    }

    /// An agent as shown: whether it is connected, and whether what it
    /// sends can be stored now.
    fn view(&self, rec: &picket_store::AgentRecord) -> v1::Agent {
        let here = self.state.sessions.is_online(&rec.name);
        let mut a = convert::agent(rec, self.state.streaming(&rec.name));
        a.not_stored = here && !self.state.store.health().writable();
        a.clock_offset_ms = self.state.sessions.clock_offset_ms(&rec.name);
        if let Some(heard) = self.state.sessions.heard_ms(&rec.name) {
            a.last_seen_unix_ms = a.last_seen_unix_ms.max(heard);
        }
        a
    }

    pub(super) async fn do_list_agents(
        &self,
        req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        let caller = require(&req, &self.state.audit, Role::Viewer, "agents.list", "")?;
        let scope = Scope::of(&self.state, &caller)?;
        let agents = self
            .state
            .store
            .agents()
            .map_err(store_error)?
            .iter()
            .filter(|r| scope.holds(r))
            .map(|r| self.view(r))
            .collect();
        Ok(Response::new(v1::ListAgentsResponse { agents }))
    }

    pub(super) async fn do_get_agent(
        &self,
        req: Request<v1::GetAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let caller = require(&req, &self.state.audit, Role::Viewer, "agents.show", "")?;
        let name = &req.get_ref().name;
        if !Scope::of(&self.state, &caller)?.admits(&self.state, name)? {
            return Err(Status::not_found(format!("no agent named {name}")));
        }
        let mut agent = self.agent_view(name)?;
        agent.last_rollout = self.last_rollout(name).await;
        Ok(Response::new(agent))
    }

    pub(super) async fn do_revoke_agent(
        &self,
        req: Request<v1::RevokeAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let name = req.get_ref().name.clone();
        let st = &self.state;
        let caller = require(&req, &st.audit, Role::Admin, "agents.revoke", &name)?;
        let n = name.clone();
        let updated = st
            .store
            .blocking(move |s| {
                let updated = s.update_agent(&n, |r| {
                    r.revoked_ms.get_or_insert_with(now_ms);
                })?;
                s.flush()?;
                Ok(updated)
            })
            .await
            .map_err(store_error)?;
        if updated.is_none() {
            st.audit
                .record(&caller.actor(), "agents.revoke", &name, "error: not found");
            return Err(Status::not_found(format!("no agent named {name}")));
        }
        st.sessions.close(&name);
        st.alerts.forget(name.clone()).await;
        st.audit
            .record(&caller.actor(), "agents.revoke", &name, "ok");
        Ok(Response::new(self.agent_view(&name)?))
    }

    pub(super) async fn do_forget_agent(
        &self,
        req: Request<v1::ForgetAgentRequest>,
    ) -> Result<Response<v1::ForgetAgentResponse>, Status> {
        let st = &self.state;
        let name = req.get_ref().name.clone();
        let caller = require(&req, &st.audit, Role::Admin, "agents.forget", &name)?;
        let n = name.clone();
        let outcome = st
            .store
            .blocking(move |s| {
                let o = s.forget_agent(&n)?;
                s.flush()?;
                Ok(o)
            })
            .await
            .map_err(store_error)?;
        let refusal = match outcome {
            Forget::Forgotten => None,
            Forget::NotFound => Some(Status::not_found(format!("no agent named {name}"))),
            Forget::NotRevoked => Some(Status::failed_precondition(format!(
                "agent {name} is not revoked; run `picketctl agents revoke {name}` first"
            ))),
        };
        if let Some(status) = refusal {
            let outcome = format!("error: {}", status.message());
            st.audit
                .record(&caller.actor(), "agents.forget", &name, &outcome);
            return Err(status);
        }
        st.alerts.forget(name.clone()).await;
        st.audit
            .record(&caller.actor(), "agents.forget", &name, "ok");
        Ok(Response::new(v1::ForgetAgentResponse { name }))
    }

    pub(super) async fn do_label_agent(
        &self,
        req: Request<v1::LabelAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let st = &self.state;
        let name = req.get_ref().name.clone();
        let caller = require(&req, &st.audit, Role::Admin, "agents.label", &name)?;
        let r = req.into_inner();
        for (k, v) in &r.set {
            validate_label(k, v).map_err(bad_input)?;
        }
        if let Some(k) = r.remove.iter().find(|k| r.set.contains_key(*k)) {
            return Err(Status::invalid_argument(format!(
                "label {k} is both set and removed"
            )));
        }
        if r.set.is_empty() && r.remove.is_empty() {
            return Err(Status::invalid_argument(
                "nothing to change: give k=v to set a label, k- to remove one",
            ));
        }
        let what = change(&r);
        let n = name.clone();
        let updated = st
            .store
            .blocking(move |s| {
                let updated = s.update_agent(&n, |a| {
                    for k in &r.remove {
                        a.pinned_labels.remove(k);
                    }
                    a.pinned_labels
                        .extend(r.set.iter().map(|(k, v)| (k.clone(), v.clone())));
                })?;
                s.flush()?;
                Ok(updated)
            })
            .await
            .map_err(store_error)?;
        let target = format!("{name} {what}");
        if updated.is_none() {
            st.audit
                .record(&caller.actor(), "agents.label", &target, "error: not found");
            return Err(Status::not_found(format!("no agent named {name}")));
        }
        st.audit
            .record(&caller.actor(), "agents.label", &target, "ok");
        Ok(Response::new(self.agent_view(&name)?))
    }
}
