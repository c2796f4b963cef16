//! Checks, before touching anything, that the process may load XDP programs and open AF_XDP
//! and raw sockets, so that a missing privilege is one clear sentence, not an EPERM later.

const CAP_IPC_LOCK: u32 = 14;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Locked memory the AF_XDP buffers of one worker need (its UMEM), with room for the rings.
const MEMLOCK_NEEDED: u64 = 64 << 20;

/// The effective capability set from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// The soft limit on locked memory, from /proc/self/limits (`None` = unlimited).
fn memlock_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    let soft = line.split_whitespace().nth(3)?;
    soft.parse().ok()
}

/// Names of the capabilities oxlb needs and lacks; empty when all are there.
pub fn missing() -> Vec<&'static str> {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut out = Vec::new();
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    if !has(CAP_NET_RAW) {
        out.push("CAP_NET_RAW");
    }
    // CAP_SYS_ADMIN covers BPF and the verifier's pointer arithmetic on kernels from before
    // CAP_BPF and CAP_PERFMON existed; without CAP_PERFMON the verifier rejects the program.
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_PERFMON");
    }
    // The UMEM is locked memory: either the limit allows it, or CAP_IPC_LOCK lifts the limit.
    let enough_memlock = memlock_limit().is_none_or(|l| l >= MEMLOCK_NEEDED);
    if !has(CAP_IPC_LOCK) && !enough_memlock {
        out.push("CAP_IPC_LOCK");
    }
    out
}
