//! The admin service, for `picketctl` and automation. Every call is checked
//! against the caller's role; every change is written to the audit log.

use std::sync::Arc;
use std::time::Duration;

use picket_model::{Labels, Role, validate_label, validate_name};
use picket_proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::auth::{self, Caller, require};
use super::scope::Scope;
use super::state::State;
use super::status::{bad_input, internal, store_error};
use picket_clock::{now_ms, to_ms};
use picket_pki::{SubjectKind, token};
use picket_store::messages as convert;
use picket_store::{TokenRecord, UserRecord};

pub struct AdminSvc {
    pub state: Arc<State>,
}

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86400);
const MAX_TOKEN_USES: u32 = 10_000;
/// The most audit records one answer holds (`audit --limit`).
const MAX_AUDIT_RECORDS: u32 = 10_000;

impl AdminSvc {
    /// A user's stream, ended when the user is revoked.
    fn guard<T: Send + 'static>(
        &self,
        caller: &Caller,
        r: Response<Stream<T>>,
    ) -> Response<Stream<T>> {
        r.map(|s| self.state.user_streams.guard(caller, s))
    }
}

pub(super) type Stream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn grep(pattern: &str) -> Result<Option<crate::feed::Grep>, Status> {
    if pattern.is_empty() {
        return Ok(None);
    }
    crate::feed::Grep::new(pattern)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("--grep: {e}")))
}

#[tonic::async_trait]
impl AdminService for AdminSvc {
    type StreamEventsStream = Stream<v1::StoredEvent>;
    type StreamLogsStream = Stream<v1::StoredLogLine>;
    type RunStream = Stream<v1::RunResult>;
    type WatchRolloutStream = Stream<v1::Rollout>;

    async fn run(&self, req: Request<v1::RunRequest>) -> Result<Response<Self::RunStream>, Status> {
        let caller = auth::caller(&req)?;
        let r = self.do_run(req).await?;
        Ok(self.guard(&caller, r))
    }

    async fn create_rollout(
        &self,
        req: Request<v1::CreateRolloutRequest>,
    ) -> Result<Response<v1::CreateRolloutResponse>, Status> {
        self.do_create_rollout(req).await
    }

    async fn list_rollouts(
        &self,
        req: Request<v1::ListRolloutsRequest>,
    ) -> Result<Response<v1::ListRolloutsResponse>, Status> {
        self.do_list_rollouts(req).await
    }

    async fn get_rollout(
        &self,
        req: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        self.do_get_rollout(req).await
    }

    async fn watch_rollout(
        &self,
        req: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let caller = auth::caller(&req)?;
        let r = self.do_watch_rollout(req).await?;
        Ok(self.guard(&caller, r))
    }

    async fn act_on_rollout(
        &self,
        req: Request<v1::RolloutActionRequest>,
    ) -> Result<Response<v1::Rollout>, Status> {
        self.do_act_on_rollout(req).await
    }

    async fn list_alerts(
        &self,
        req: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        self.do_list_alerts(req).await
    }

    async fn get_alert(
        &self,
        req: Request<v1::GetAlertRequest>,
    ) -> Result<Response<v1::Alert>, Status> {
        self.do_get_alert(req).await
    }

    async fn list_alert_rules(
        &self,
        req: Request<v1::ListAlertRulesRequest>,
    ) -> Result<Response<v1::ListAlertRulesResponse>, Status> {
        self.do_list_alert_rules(req).await
    }

    async fn reload_alerts(
        &self,
        req: Request<v1::ReloadAlertsRequest>,
    ) -> Result<Response<v1::ReloadAlertsResponse>, Status> {
        self.do_reload_alerts(req).await
    }

    async fn test_notifier(
        &self,
        req: Request<v1::TestNotifierRequest>,
    ) -> Result<Response<v1::TestNotifierResponse>, Status> {
        self.do_test_notifier(req).await
    }

    async fn create_silence(
        &self,
        req: Request<v1::CreateSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        self.do_create_silence(req).await
    }

    async fn list_silences(
        &self,
        req: Request<v1::ListSilencesRequest>,
    ) -> Result<Response<v1::ListSilencesResponse>, Status> {
        self.do_list_silences(req).await
    }

    async fn expire_silence(
        &self,
        req: Request<v1::ExpireSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        self.do_expire_silence(req).await
    }

    async fn stream_events(
        &self,
        req: Request<v1::EventsQuery>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let caller = require(&req, &self.state.audit, Role::Viewer, "events.list", "")?;
        let q = req.into_inner();
        let min_severity = match q.min_severity {
            0 => None,
            s => Some(picket_proto::convert::severity(s).map_err(bad_input)?),
        };
        let scope = Scope::of(&self.state, &caller)?.hosts(&self.state)?;
        let filter = crate::feed::EventFilter {
            scope: scope.map(std::sync::Arc::new),
            host: q.host,
            source: q.source,
            min_severity,
            since: q.since_unix_ms,
            grep: grep(&q.grep)?,
        };
        let after = crate::feed::after(&q.after).map_err(Status::invalid_argument)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
        self.state.feed.events(filter, limit, q.follow, after, tx);
        let out =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |r| {
                r.map(|e| convert::event(&e)).map_err(feed_end)
            });
        Ok(self.guard(&caller, Response::new(Box::pin(out))))
    }

    async fn stream_logs(
        &self,
        req: Request<v1::LogsQuery>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let caller = require(&req, &self.state.audit, Role::Viewer, "logs.list", "")?;
        let q = req.into_inner();
        let scope = Scope::of(&self.state, &caller)?.hosts(&self.state)?;
        let filter = crate::feed::LogFilter {
            scope: scope.map(std::sync::Arc::new),
            host: q.host,
            source: q.source,
            since: q.since_unix_ms,
            grep: grep(&q.grep)?,
        };
        let after = crate::feed::after(&q.after).map_err(Status::invalid_argument)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let tail = usize::try_from(q.tail).unwrap_or(usize::MAX);
        self.state.feed.logs(filter, tail, q.follow, after, tx);
        let out =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |r| {
                r.map(|l| convert::log_line(&l)).map_err(feed_end)
            });
        Ok(self.guard(&caller, Response::new(Box::pin(out))))
    }

    async fn list_agents(
        &self,
        req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        self.do_list_agents(req).await
    }

    async fn get_agent(
        &self,
        req: Request<v1::GetAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        self.do_get_agent(req).await
    }

    async fn revoke_agent(
        &self,
        req: Request<v1::RevokeAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        self.do_revoke_agent(req).await
    }

    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let st = &self.state;
        let caller = require(&req, &st.audit, Role::Admin, "token.create", "")?;
        let r = req.into_inner();
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument("token ttl may be at most 30 days"));
        }
        let uses = r.uses.max(1);
        if uses > MAX_TOKEN_USES {
            return Err(Status::invalid_argument(format!(
                "a token may have at most {MAX_TOKEN_USES} uses"
            )));
        }
        for (k, v) in &r.labels {
            validate_label(k, v).map_err(bad_input)?;
        }
        let (tok, hash) = token::generate();
        let id = token::id_of_hash(&hash);
        let expires_ms = to_ms(picket_clock::now() + ttl);
        let rec = TokenRecord {
            id: id.clone(),
            expires_ms,
            uses_left: uses,
            labels: r.labels.into_iter().collect::<Labels>(),
            created_by: caller.actor(),
        };
        let h = hash.clone();
        st.store
            .blocking(move |s| {
                s.put_token(&h, &rec)?;
                s.flush()
            })
            .await
            .map_err(store_error)?;
        st.audit.record(
            &caller.actor(),
            "token.create",
            &format!("token:{id}"),
            "ok",
        );
        Ok(Response::new(v1::CreateTokenResponse {
            token: tok,
            id,
            expires_unix_ms: expires_ms,
            uses,
        }))
    }

    async fn add_user(
        &self,
        req: Request<v1::AddUserRequest>,
    ) -> Result<Response<v1::AddUserResponse>, Status> {
        let st = &self.state;
        let target = format!("user:{}", req.get_ref().name);
        let caller = require(&req, &st.audit, Role::Admin, "user.add", &target)?;
        let r = req.into_inner();
        validate_name(&r.name).map_err(bad_input)?;
        let role = picket_proto::convert::role(r.role).map_err(bad_input)?;
        for u in &r.run_as {
            super::grants::valid_user(u)
                .map_err(|e| Status::invalid_argument(format!("--run-as: {e}")))?;
        }
        let hosts = match r.hosts.trim() {
            "" => None,
            _ if role == Role::Admin => {
                return Err(Status::invalid_argument(
                    "--hosts: admins are never scoped; give the user another role",
                ));
            }
            h => {
                let sel: picket_model::Selector = h
                    .parse()
                    .map_err(|e| Status::invalid_argument(format!("--hosts: {e}")))?;
                Some(sel.to_string())
            }
        };
        let issued = st
            .ca
            .issue(&r.csr_pem, &r.name, SubjectKind::User, st.cfg.user_cert_ttl)
            .map_err(bad_input)?;
        let user = UserRecord {
            name: r.name.clone(),
            role,
            created_ms: now_ms(),
            revoked_ms: None,
            run_as: r.run_as.clone(),
            hosts: hosts.clone(),
        };
        let added = st
            .store
            .blocking(move |s| {
                let added = s.add_user(&user)?;
                s.flush()?;
                Ok(added)
            })
            .await
            .map_err(store_error)?;
        if added.is_err() {
            st.audit
                .record(&caller.actor(), "user.add", &target, "error: revoked");
            return Err(Status::failed_precondition(format!(
                "user {} was revoked and cannot be added again; choose another name",
                r.name
            )));
        }
        st.audit.record(
            &caller.actor(),
            "user.add",
            &target,
            &format!(
                "ok: role {role}{}{}",
                if r.run_as.is_empty() {
                    String::new()
                } else {
                    format!(", run-as {}", r.run_as.join(","))
                },
                hosts.map(|h| format!(", hosts {h}")).unwrap_or_default()
            ),
        );
        Ok(Response::new(v1::AddUserResponse {
            cert_pem: issued.cert_pem,
            ca_pem: st.ca.cert_pem().to_string(),
            not_after_unix_ms: to_ms(issued.not_after),
        }))
    }

    async fn revoke_user(
        &self,
        req: Request<v1::RevokeUserRequest>,
    ) -> Result<Response<v1::RevokeUserResponse>, Status> {
        let st = &self.state;
        let name = req.get_ref().name.clone();
        let target = format!("user:{name}");
        let caller = require(&req, &st.audit, Role::Admin, "user.revoke", &target)?;
        let n = name.clone();
        let revoked = st
            .store
            .blocking(move |s| {
                let r = s.revoke_user(&n, now_ms())?;
                s.flush()?;
                Ok(r)
            })
            .await
            .map_err(store_error)?;
        let Some(user) = revoked else {
            st.audit
                .record(&caller.actor(), "user.revoke", &target, "error: not found");
            return Err(Status::not_found(format!("no user named {name}")));
        };
        // Those the users' mirror cut already (cluster mode), and the rest.
        st.user_streams.cut(&name);
        let cut = st.user_streams.take_counted(&name);
        st.audit.record(
            &caller.actor(),
            "user.revoke",
            &target,
            &format!("ok: {cut} streams cut"),
        );
        Ok(Response::new(v1::RevokeUserResponse {
            name,
            revoked_unix_ms: user.revoked_ms.unwrap_or_default(),
            streams_cut: cut,
        }))
    }

    async fn list_users(
        &self,
        req: Request<v1::ListUsersRequest>,
    ) -> Result<Response<v1::ListUsersResponse>, Status> {
        require(&req, &self.state.audit, Role::Viewer, "user.list", "")?;
        let users = self
            .state
            .store
            .users()
            .map_err(store_error)?
            .into_iter()
            .map(|u| v1::User {
                name: u.name,
                role: v1::Role::from(u.role) as i32,
                created_unix_ms: u.created_ms,
                revoked_unix_ms: u.revoked_ms.unwrap_or(0),
                run_as: u.run_as,
                hosts: u.hosts.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(v1::ListUsersResponse { users }))
    }

    async fn label_agent(
        &self,
        req: Request<v1::LabelAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        self.do_label_agent(req).await
    }

    async fn forget_agent(
        &self,
        req: Request<v1::ForgetAgentRequest>,
    ) -> Result<Response<v1::ForgetAgentResponse>, Status> {
        self.do_forget_agent(req).await
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let caller = require(&req, &self.state.audit, Role::Viewer, "status", "")?;
        let scope = Scope::of(&self.state, &caller)?;
        let mut out = v1::StatusResponse {
            version: env!("PICKET_VERSION").to_string(),
            ..Default::default()
        };
        let agents = self.state.store.agents().map_err(store_error)?;
        for a in agents.into_iter().filter(|a| scope.holds(a)) {
            if a.revoked_ms.is_none() {
                let v = a.inventory.map(|i| i.agent_version).unwrap_or_default();
                *out.agent_versions.entry(v).or_default() += 1;
            }
            if a.revoked_ms.is_some() {
                out.agents_revoked += 1;
            } else if self.state.streaming(&a.name) {
                out.agents_online += 1;
            } else {
                out.agents_offline += 1;
            }
        }
        let rollouts = self
            .state
            .rollouts
            .list()
            .await
            .map_err(super::rollouts::status)?;
        let running = rollouts.iter().filter(|v| !v.p.state.is_finished()).count();
        out.rollouts_running = u32::try_from(running).unwrap_or(u32::MAX);
        out.alerts_firing = self.state.alerts.firing();
        if let Some(c) = self.state.cluster.as_ref().map(|c| &c.cluster) {
            let unavailable = |e: picket_cluster::EtcdError| Status::unavailable(e.to_string());
            out.replicas = c
                .replicas()
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(|r| v1::ClusterReplica {
                    node: r.node,
                    advertise: r.advertise,
                })
                .collect();
            if let Some((leader, since)) = c.leader().await.map_err(unavailable)? {
                out.leader = leader;
                out.leader_since_unix_ms = since;
            }
        }
        Ok(Response::new(out))
    }

    async fn list_audit(
        &self,
        req: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        require(&req, &self.state.audit, Role::Viewer, "audit.list", "")?;
        let n = match req.get_ref().limit {
            0 => 100,
            n => n.min(MAX_AUDIT_RECORDS) as usize,
        };
        let since = req.get_ref().since_unix_ms;
        let records = self
            .state
            .audit
            .tail(n)
            .map_err(store_error)?
            .into_iter()
            .filter(|r| r.time_ms >= since)
            .map(|r| v1::AuditRecord {
                time_unix_ms: r.time_ms,
                actor: r.actor,
                action: r.action,
                target: r.target,
                outcome: r.outcome,
            })
            .collect();
        Ok(Response::new(v1::ListAuditResponse { records }))
    }

    async fn query_metrics(
        &self,
        req: Request<v1::QueryMetricsRequest>,
    ) -> Result<Response<v1::QueryMetricsResponse>, Status> {
        let caller = require(&req, &self.state.audit, Role::Viewer, "metrics.query", "")?;
        let r = req.into_inner();
        let st = &self.state;
        if !Scope::of(st, &caller)?.admits(st, &r.host)? {
            return Err(Status::not_found(format!("no agent named {}", r.host)));
        }
        let now = now_ms();
        let since = if r.since_unix_ms > 0 {
            r.since_unix_ms
        } else {
            now - 3_600_000
        };
        let raw_from = now - picket_model::millis(st.cfg.metrics_raw_retention);
        let st2 = st.clone();
        let host = r.host.clone();
        let use_raw = since >= raw_from;
        let resp = tokio::task::spawn_blocking(move || {
            if use_raw {
                st2.feed
                    .records()
                    .samples(&host, since, i64::MAX)
                    .map(|s| convert::raw_series(s, &r.field))
            } else {
                st2.feed
                    .records()
                    .rollups(&host, since, i64::MAX)
                    .map(|s| convert::rollup_series(s, &r.field))
            }
        })
        .await
        .map_err(internal)?
        .map_err(store_error)?;
        Ok(Response::new(v1::QueryMetricsResponse {
            series: resp,
            resolution: if use_raw { "raw" } else { "1m" }.into(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        match require(&req, &self.state.audit, Role::Viewer, "whoami", "")? {
            Caller::User { name, role } => Ok(Response::new(v1::WhoAmIResponse {
                name,
                role: v1::Role::from(role) as i32,
            })),
            Caller::Agent(_) => Err(Status::permission_denied("agents have no role")),
        }
    }
}

/// How a stream from the feed ended, as the client is told it.
fn feed_end(e: crate::feed::End) -> Status {
    use crate::feed::End;
    match e {
        End::Store(e) => store_error(e),
        End::ShuttingDown => Status::unavailable("control plane shutting down"),
        e @ End::Expired { .. } => Status::out_of_range(e.to_string()),
    }
}
