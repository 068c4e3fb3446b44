//! `picketctl agents label NAME k=v... k-...`: an admin sets and removes a
//! host's labels, the only ones (with those fixed at enrollment) that
//! selectors match (SPEC §4). Audited, with the change.

use picket_model::{Role, validate_label};
use picket_proto::v1;
use tonic::{Request, Response, Status};

use super::admin::AdminSvc;
use super::auth::require;
use super::status::{bad_input, store_error};

/// The audit's account of a change: `env=prod,team-`.
fn change(r: &v1::LabelAgentRequest) -> String {
    let set = r.set.iter().map(|(k, v)| format!("{k}={v}"));
    let removed = r.remove.iter().map(|k| format!("{k}-"));
    set.chain(removed).collect::<Vec<_>>().join(",")
}

pub(super) async fn label(
    svc: &AdminSvc,
    req: Request<v1::LabelAgentRequest>,
) -> Result<Response<v1::Agent>, Status> {
    let st = &svc.state;
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
    Ok(Response::new(svc.agent_view(&name)?))
}
