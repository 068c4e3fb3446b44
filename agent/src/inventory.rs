//! What the agent tells the control plane about its host on connect.

use picket_model::Labels;
use picket_proto::v1;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, Networks, RefreshKind, System};

pub fn hostname() -> String {
    System::host_name().unwrap_or_else(|| "localhost".into())
}

pub fn collect(labels: &Labels) -> v1::Inventory {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing()),
    );
    let networks = Networks::new_with_refreshed_list();
    let mut addresses: Vec<String> = networks
        .values()
        .flat_map(|n| n.ip_networks().iter().map(|ip| ip.addr))
        .filter(|a| !a.is_loopback())
        .map(|a| a.to_string())
        .collect();
    addresses.sort();
    addresses.dedup();
    v1::Inventory {
        hostname: hostname(),
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        cpu_count: u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX),
        memory_bytes: sys.total_memory(),
        agent_version: env!("PICKET_VERSION").to_string(),
        labels: labels.clone().into_iter().collect(),
        addresses,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_has_a_kernel_cpus_and_memory() {
        let inv = super::collect(&Default::default());
        assert!(!inv.kernel.is_empty());
        assert!(inv.cpu_count >= 1);
        assert!(inv.memory_bytes > 0);
        assert!(!inv.hostname.is_empty());
    }
}
