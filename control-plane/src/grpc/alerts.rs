//! The admin service's alert calls: alerts, rules, reload, test, and
//! silences. Reading needs the viewer role; a reload, a test and every
//! silence change need the operator role and are audited.

use std::time::Duration;

use picket_model::Role;
use picket_proto::v1;
use tonic::{Request, Response, Status};

use super::admin::AdminSvc;
use super::auth::require;
use super::status::{internal, store_error};
use crate::alert::driver::{AlertError, Loaded};
use picket_alert::engine::{Alert, Silence};
use picket_alert::rules::{Kind, Op, Rule};
use picket_clock::now_ms;
use picket_notify::{Message, Outcome};

pub fn status(e: AlertError) -> Status {
    match e {
        AlertError::NoFile | AlertError::Read { .. } | AlertError::Rules { .. } => {
            Status::failed_precondition(e.to_string())
        }
        AlertError::NoSilence(_) => Status::not_found(e.to_string()),
        AlertError::NotLeader(_) => Status::unavailable(e.to_string()),
        AlertError::Store(_) | AlertError::Client(_) | AlertError::Gone => internal(e),
    }
}

pub fn alert(a: &Alert) -> v1::Alert {
    v1::Alert {
        fingerprint: a.fingerprint.clone(),
        rule: a.rule.clone(),
        state: a.state.as_str().to_string(),
        severity: a.labels.get("severity").cloned().unwrap_or_default(),
        labels: a.labels.clone().into_iter().collect(),
        annotations: a.annotations.clone().into_iter().collect(),
        started_unix_ms: a.started_ms.unwrap_or(0),
        ended_unix_ms: a.ended_ms.unwrap_or(0),
        active_unix_ms: a.active_ms,
        value: a.value.clone(),
        silenced: a.silenced,
        inhibited: a.inhibited,
    }
}

fn silence(s: &Silence) -> v1::Silence {
    v1::Silence {
        id: s.id.clone(),
        matchers: s.matchers.clone().into_iter().collect(),
        ends_unix_ms: s.ends_ms,
        comment: s.comment.clone(),
        created_by: s.created_by.clone(),
        created_unix_ms: s.created_ms,
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A rule's kind and condition in one line, for `alerts rules`.
fn condition(r: &Rule) -> (&'static str, String) {
    match &r.kind {
        Kind::Threshold {
            metric,
            op,
            value,
            hold,
        } => {
            let op = match op {
                Op::Gt => ">",
                Op::Ge => ">=",
                Op::Lt => "<",
                Op::Le => "<=",
            };
            let mut c = format!("{metric} {op} {value}");
            if !hold.is_zero() {
                c.push_str(&format!(" for {}", human(*hold)));
            }
            ("threshold", c)
        }
        Kind::EventCount {
            matcher,
            count,
            window,
        } => (
            "event_count",
            format!("{count} × {} in {}", matcher, human(*window)),
        ),
        Kind::Event {
            matcher,
            resolve_after,
        } => (
            "event",
            format!("{matcher}, resolves after {}", human(*resolve_after)),
        ),
        Kind::HostSilent { after } => ("host_silent", format!("nothing for {}", human(*after))),
        Kind::StoreUnwritable { after } => (
            "store_unwritable",
            format!("the store refuses records for {}", human(*after)),
        ),
        Kind::RolloutFailed { resolve_after } => (
            "rollout_failed",
            format!(
                "a rollout failed or rolled back, resolves after {}",
                human(*resolve_after)
            ),
        ),
    }
}

fn rules_view(l: &Loaded, stats: &picket_notify::outbox::Stats) -> v1::ListAlertRulesResponse {
    let rules = l
        .rules
        .rules
        .iter()
        .map(|r| {
            let (kind, condition) = condition(r);
            v1::AlertRule {
                name: r.name.clone(),
                kind: kind.to_string(),
                severity: r.severity.as_str().to_string(),
                condition,
                selector: r
                    .selector
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let notifiers = l
        .rules
        .notifiers
        .iter()
        .map(|n| {
            let s = stats.of(&n.name);
            v1::AlertNotifier {
                name: n.name.clone(),
                kind: picket_notify::kind_name(&n.kind).to_string(),
                target: picket_notify::target(&n.kind),
                queued: s.queued,
                failed: s.failed,
                last_error: s.last_error,
            }
        })
        .collect();
    v1::ListAlertRulesResponse {
        file: l
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_default(),
        rules,
        notifiers,
        warnings: l.rules.warnings.clone(),
        loaded_unix_ms: l.loaded_ms,
    }
}

impl AdminSvc {
    pub(super) async fn do_list_alerts(
        &self,
        req: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        let st = &self.state;
        let caller = require(&req, &st.audit, Role::Viewer, "alerts.list", "")?;
        let scope = super::scope::Scope::of(st, &caller)?.hosts(st)?;
        let want = req.into_inner().state;
        if !matches!(want.as_str(), "" | "pending" | "firing" | "resolved") {
            return Err(Status::invalid_argument(format!(
                "--state {want:?}: expected pending, firing or resolved"
            )));
        }
        let mut alerts: Vec<v1::Alert> = st
            .alerts
            .list()
            .await
            .map_err(status)?
            .iter()
            .filter(|a| want.is_empty() || a.state.as_str() == want)
            // A scoped user sees the alerts of hosts in scope only.
            .filter(|a| {
                scope
                    .as_ref()
                    .is_none_or(|s| a.labels.get("host").is_some_and(|h| s.contains(h)))
            })
            .map(alert)
            .collect();
        // Newest first, as people read a list of what is wrong.
        alerts.sort_by(|a, b| {
            b.active_unix_ms
                .cmp(&a.active_unix_ms)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        Ok(Response::new(v1::ListAlertsResponse { alerts }))
    }

    pub(super) async fn do_get_alert(
        &self,
        req: Request<v1::GetAlertRequest>,
    ) -> Result<Response<v1::Alert>, Status> {
        let st = &self.state;
        require(&req, &st.audit, Role::Viewer, "alerts.show", "")?;
        let fp = req.into_inner().fingerprint;
        let all = st.alerts.list().await.map_err(status)?;
        all.iter()
            .find(|a| a.fingerprint == fp)
            .map(|a| Response::new(alert(a)))
            .ok_or_else(|| Status::not_found(format!("no alert with fingerprint {fp}")))
    }

    pub(super) async fn do_list_alert_rules(
        &self,
        req: Request<v1::ListAlertRulesRequest>,
    ) -> Result<Response<v1::ListAlertRulesResponse>, Status> {
        let st = &self.state;
        require(&req, &st.audit, Role::Viewer, "alerts.rules", "")?;
        let l = st.alerts.loaded().await.map_err(status)?;
        let stats = st.alerts.outbox.stats_now().await;
        Ok(Response::new(rules_view(&l, &stats)))
    }

    pub(super) async fn do_reload_alerts(
        &self,
        req: Request<v1::ReloadAlertsRequest>,
    ) -> Result<Response<v1::ReloadAlertsResponse>, Status> {
        let st = &self.state;
        let caller = require(&req, &st.audit, Role::Operator, "alerts.reload", "")?;
        match st.alerts.reload().await {
            Ok(l) => {
                let r = &l.rules;
                st.audit.record(
                    &caller.actor(),
                    "alerts.reload",
                    "",
                    &format!(
                        "ok: {} rule(s), {} notifier(s)",
                        r.rules.len(),
                        r.notifiers.len()
                    ),
                );
                Ok(Response::new(v1::ReloadAlertsResponse {
                    rules: u32::try_from(r.rules.len()).unwrap_or(u32::MAX),
                    notifiers: u32::try_from(r.notifiers.len()).unwrap_or(u32::MAX),
                    warnings: r.warnings.clone(),
                }))
            }
            Err(e) => {
                st.audit
                    .record(&caller.actor(), "alerts.reload", "", &format!("error: {e}"));
                tracing::error!(error = %e, "alerts reload refused; the rules in force stay");
                Err(status(e))
            }
        }
    }

    pub(super) async fn do_test_notifier(
        &self,
        req: Request<v1::TestNotifierRequest>,
    ) -> Result<Response<v1::TestNotifierResponse>, Status> {
        let st = &self.state;
        let name = req.get_ref().notifier.clone();
        let caller = require(&req, &st.audit, Role::Operator, "alerts.test", &name)?;
        let msg = Message::test(&name, now_ms());
        let outcome = st.alerts.outbox.send_now(&name, &msg).await;
        let verdict = match &outcome {
            Outcome::Sent => "ok".to_string(),
            Outcome::Refused(e) | Outcome::Failed(e) => format!("error: {e}"),
        };
        st.audit
            .record(&caller.actor(), "alerts.test", &name, &verdict);
        match outcome {
            Outcome::Sent => Ok(Response::new(v1::TestNotifierResponse {})),
            Outcome::Refused(e) if e.starts_with("no notifier named") => Err(Status::not_found(e)),
            Outcome::Refused(e) | Outcome::Failed(e) => Err(Status::unavailable(e)),
        }
    }

    pub(super) async fn do_create_silence(
        &self,
        req: Request<v1::CreateSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        let st = &self.state;
        let caller = require(&req, &st.audit, Role::Operator, "silence.create", "")?;
        let r = req.into_inner();
        if r.matchers.is_empty() {
            return Err(Status::invalid_argument(
                "a silence needs at least one matcher (--match k=v)",
            ));
        }
        if let Some((k, _)) = r.matchers.iter().find(|(k, _)| k.is_empty()) {
            return Err(Status::invalid_argument(format!(
                "--match {k:?}=…: empty label name"
            )));
        }
        if r.duration_ms == 0 {
            return Err(Status::invalid_argument("--for must be more than 0s"));
        }
        let now = now_ms();
        let id = st
            .store
            .blocking(|s| s.new_run_id("silence"))
            .await
            .map_err(store_error)?;
        let s = Silence {
            id: id.clone(),
            matchers: r.matchers.into_iter().collect(),
            ends_ms: now.saturating_add(i64::try_from(r.duration_ms).unwrap_or(i64::MAX)),
            comment: r.comment,
            created_by: caller.actor(),
            created_ms: now,
        };
        let s = st.alerts.silence(s).await.map_err(status)?;
        let what: Vec<String> = s.matchers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        st.audit.record(
            &caller.actor(),
            "silence.create",
            &id,
            &format!(
                "ok: {} until {}",
                what.join(","),
                picket_notify::rfc3339(s.ends_ms)
            ),
        );
        Ok(Response::new(silence(&s)))
    }

    pub(super) async fn do_list_silences(
        &self,
        req: Request<v1::ListSilencesRequest>,
    ) -> Result<Response<v1::ListSilencesResponse>, Status> {
        let st = &self.state;
        require(&req, &st.audit, Role::Viewer, "silence.list", "")?;
        let now = now_ms();
        let silences = st
            .alerts
            .silences()
            .await
            .map_err(status)?
            .iter()
            .filter(|s| s.ends_ms > now)
            .map(silence)
            .collect();
        Ok(Response::new(v1::ListSilencesResponse { silences }))
    }

    pub(super) async fn do_expire_silence(
        &self,
        req: Request<v1::ExpireSilenceRequest>,
    ) -> Result<Response<v1::Silence>, Status> {
        let st = &self.state;
        let id = req.get_ref().id.clone();
        let caller = require(&req, &st.audit, Role::Operator, "silence.expire", &id)?;
        match st.alerts.expire(id.clone()).await {
            Ok(s) => {
                st.audit
                    .record(&caller.actor(), "silence.expire", &id, "ok");
                Ok(Response::new(silence(&s)))
            }
            Err(e) => {
                st.audit.record(
                    &caller.actor(),
                    "silence.expire",
                    &id,
                    &format!("error: {e}"),
                );
                Err(status(e))
            }
        }
    }
}
