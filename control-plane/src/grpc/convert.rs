//! Store records to wire messages.

use picket_proto::model::AgentStatus;
use picket_proto::v1;

use crate::store::{AgentRecord, Inventory};

pub fn agent(rec: &AgentRecord, online: bool) -> v1::Agent {
    let status = if rec.revoked_ms.is_some() {
        AgentStatus::Revoked
    } else if online {
        AgentStatus::Online
    } else {
        AgentStatus::Offline
    };
    v1::Agent {
        name: rec.name.clone(),
        labels: rec.labels().into_iter().collect(),
        status: v1::AgentStatus::from(status) as i32,
        last_seen_unix_ms: rec.last_seen_ms,
        inventory: rec.inventory.as_ref().map(|i| v1::Inventory {
            hostname: i.hostname.clone(),
            os: i.os.clone(),
            kernel: i.kernel.clone(),
            cpu_count: i.cpu_count,
            memory_bytes: i.memory_bytes,
            agent_version: i.agent_version.clone(),
            labels: rec.reported_labels.clone().into_iter().collect(),
            addresses: i.addresses.clone(),
        }),
        enrolled_unix_ms: rec.enrolled_ms,
        cert_not_after_unix_ms: rec.cert_not_after_ms,
    }
}

pub fn inventory(i: &v1::Inventory) -> Inventory {
    Inventory {
        hostname: i.hostname.clone(),
        os: i.os.clone(),
        kernel: i.kernel.clone(),
        cpu_count: i.cpu_count,
        memory_bytes: i.memory_bytes,
        agent_version: i.agent_version.clone(),
        addresses: i.addresses.clone(),
    }
}
