//! The loaded program, its links to interfaces and its maps.

use std::{collections::BTreeSet, os::fd::RawFd};

use aya::{
    include_bytes_aligned,
    maps::{HashMap, MapData, PerCpuArray, XskMap},
    programs::{xdp::XdpLink, Link as _, ProgramError, Xdp, XdpMode},
    Ebpf,
};

use crate::{
    link_query::{self, QueryError},
    LbKey, XdpError, MAX_IFACES, MAX_KEYS, MAX_QUEUES_PER_IFACE,
};

static PROGRAM_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

const PROGRAM_NAME: &str = "oxlb_redirect";
const MAP_LB_DST: &str = "lb_dst";
const MAP_LB_SRC: &str = "lb_src";
const MAP_LB_SNAT: &str = "lb_snat";
/// Capacity of `lb_snat` (our source-translation addresses).
pub const MAX_SNAT_ADDRS: usize = 4096;
const MAP_IFACE_SLOT: &str = "iface_slot";
const MAP_XSKS: &str = "xsks";
const MAP_STATS: &str = "stats";

// Indexes of the `stats` per-CPU array, as in `enum stat_index` of the C program.
const STAT_REDIRECTED: u32 = 0;
const STAT_PASSED: u32 = 1;
const STAT_NO_SOCKET: u32 = 2;
const STAT_NOT_PARSED: u32 = 3;

/// How the program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`xdpdrv`), before an skb exists.
    Native,
    /// In the kernel stack on the skb (`xdpgeneric`): works everywhere, slower.
    Generic,
}

/// One interface the program is attached to.
#[derive(Debug, Clone)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    /// Position in the XSKMAP: sockets of this interface live at `slot * 64 + queue`.
    pub slot: u32,
    pub mode: AttachMode,
}

/// Counters of the program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct XdpStats {
    /// Matched and handed to an AF_XDP socket.
    pub redirected: u64,
    /// Not load-balancer traffic, given to the kernel (includes frames too short to parse).
    pub passed: u64,
    /// Matched, but no AF_XDP socket at its (interface, queue): given to the kernel.
    pub no_socket: u64,
}

/// The XDP program loaded once and attached to a set of interfaces.
///
/// Dropping it detaches the program from every interface.
pub struct XdpRedirect {
    // Declared first so that, even without the explicit `Drop`, links go before the program.
    links: Vec<XdpLink>,
    interfaces: Vec<AttachedInterface>,
    lb_dst: HashMap<MapData, LbKey, u32>,
    lb_src: HashMap<MapData, LbKey, u32>,
    lb_snat: HashMap<MapData, LbKey, u32>,
    xsks: XskMap<MapData>,
    stats: PerCpuArray<MapData, u64>,
    _ebpf: Ebpf,
}

impl XdpRedirect {
    /// Loads the program once and attaches it to every interface: native mode first, falling
    /// back to generic (skb) mode with a `log::warn!` line that says so and why. Refuses with a
    /// clear error (naming the interface and how to see/remove it) if an XDP program is already
    /// attached to an interface. If attaching to a later interface fails, the earlier ones are
    /// detached again (nothing half-applied).
    pub fn attach(interfaces: &[String]) -> Result<XdpRedirect, XdpError> {
        validate_names(interfaces)?;

        let mut ebpf = Ebpf::load(PROGRAM_OBJECT).map_err(|e| XdpError::Load(Box::new(e)))?;
        let lb_dst =
            HashMap::try_from(take_map(&mut ebpf, MAP_LB_DST)?).map_err(map_error(MAP_LB_DST))?;
        let lb_src =
            HashMap::try_from(take_map(&mut ebpf, MAP_LB_SRC)?).map_err(map_error(MAP_LB_SRC))?;
        let lb_snat =
            HashMap::try_from(take_map(&mut ebpf, MAP_LB_SNAT)?).map_err(map_error(MAP_LB_SNAT))?;
        // Written only here; dropping this handle later is fine, the program keeps the map.
        let mut iface_slot: HashMap<MapData, u32, u32> =
            HashMap::try_from(take_map(&mut ebpf, MAP_IFACE_SLOT)?)
                .map_err(map_error(MAP_IFACE_SLOT))?;
        let xsks = XskMap::try_from(take_map(&mut ebpf, MAP_XSKS)?).map_err(map_error(MAP_XSKS))?;
        let stats =
            PerCpuArray::try_from(take_map(&mut ebpf, MAP_STATS)?).map_err(map_error(MAP_STATS))?;

        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(XdpError::ObjectMismatch {
                what: "program",
                name: PROGRAM_NAME,
            })?
            .try_into()
            .map_err(|e| XdpError::Verify(Box::new(e)))?;
        program.load().map_err(|e| XdpError::Verify(Box::new(e)))?;

        // On an early return these drop, and dropping an XdpLink detaches it.
        let mut links = Vec::with_capacity(interfaces.len());
        let mut attached = Vec::with_capacity(interfaces.len());
        for (slot, name) in (0u32..).zip(interfaces) {
            let state = link_query::query(name).map_err(|e| match e {
                QueryError::NoSuchInterface => XdpError::UnknownInterface { name: name.clone() },
                QueryError::Io(source) => XdpError::Query {
                    name: name.clone(),
                    source,
                },
            })?;
            if let Some((mode, prog_id)) = state.attached {
                return Err(XdpError::AlreadyAttached {
                    name: name.clone(),
                    detail: format!(" (program id {prog_id}, {mode} mode)"),
                });
            }
            // Before attaching, so the first packet already finds its slot.
            iface_slot
                .insert(state.ifindex, slot, 0)
                .map_err(map_error(MAP_IFACE_SLOT))?;
            let (link, mode) = attach_one(program, name, state.ifindex)?;
            links.push(link);
            attached.push(AttachedInterface {
                name: name.clone(),
                ifindex: state.ifindex,
                slot,
                mode,
            });
            log::info!(
                "XDP program {PROGRAM_NAME} attached to {name} (ifindex {}, {mode:?} mode)",
                state.ifindex
            );
        }

        Ok(XdpRedirect {
            links,
            interfaces: attached,
            lb_dst,
            lb_src,
            lb_snat,
            xsks,
            stats,
            _ebpf: ebpf,
        })
    }

    /// The interfaces the program is attached to, in the order given to [`Self::attach`].
    pub fn interfaces(&self) -> &[AttachedInterface] {
        &self.interfaces
    }

    /// Puts an AF_XDP socket fd into the XSKMAP slot for (ifindex, queue).
    ///
    /// The socket must be bound to that interface and queue; the kernel removes it from the map
    /// by itself when the socket closes.
    pub fn register_socket(&mut self, ifindex: u32, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        let slot = self
            .interfaces
            .iter()
            .find(|i| i.ifindex == ifindex)
            .map(|i| i.slot)
            .ok_or_else(|| XdpError::NotAttached {
                ifindex,
                attached: self
                    .interfaces
                    .iter()
                    .map(|i| format!("{} = {}", i.name, i.ifindex))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if queue >= MAX_QUEUES_PER_IFACE {
            return Err(XdpError::QueueOutOfRange {
                queue,
                max: MAX_QUEUES_PER_IFACE,
            });
        }
        self.xsks
            .set(slot * MAX_QUEUES_PER_IFACE + queue, fd, 0)
            .map_err(map_error(MAP_XSKS))
    }

    /// Makes the contents of `lb_dst` and `lb_src` exactly these sets (adds missing keys,
    /// removes others). Adds before removing so a replaced key never has a gap, unless the map
    /// could not hold old and new keys at once: then stale keys go first (logged).
    pub fn sync_keys(
        &mut self,
        dst: &BTreeSet<LbKey>,
        src: &BTreeSet<LbKey>,
    ) -> Result<(), XdpError> {
        for (map, want) in [(MAP_LB_DST, dst), (MAP_LB_SRC, src)] {
            if want.len() > MAX_KEYS {
                return Err(XdpError::TooManyKeys {
                    map,
                    count: want.len(),
                    max: MAX_KEYS,
                });
            }
        }
        let mut delta_dst = KeyDelta::read(&self.lb_dst, MAP_LB_DST, dst)?;
        let mut delta_src = KeyDelta::read(&self.lb_src, MAP_LB_SRC, src)?;
        delta_dst.add(&mut self.lb_dst)?;
        delta_src.add(&mut self.lb_src)?;
        delta_dst.remove(&mut self.lb_dst)?;
        delta_src.remove(&mut self.lb_src)?;
        Ok(())
    }

    /// Makes `lb_snat` hold exactly these addresses (keys with port 0), each steering replies
    /// to ports `first..=last`. Entries are written before stale ones are removed.
    pub fn sync_snat(
        &mut self,
        addrs: &BTreeSet<LbKey>,
        first: u16,
        last: u16,
    ) -> Result<(), XdpError> {
        if addrs.len() > MAX_SNAT_ADDRS {
            return Err(XdpError::TooManyKeys {
                map: MAP_LB_SNAT,
                count: addrs.len(),
                max: MAX_SNAT_ADDRS,
            });
        }
        let range = (u32::from(first) << 16) | u32::from(last);
        let mut delta = KeyDelta::read(&self.lb_snat, MAP_LB_SNAT, addrs)?;
        for key in addrs {
            self.lb_snat
                .insert(key, range, 0)
                .map_err(map_error(MAP_LB_SNAT))?;
        }
        delta.remove(&mut self.lb_snat)
    }

    /// Reads back the keys of `lb_dst` and `lb_src` as the kernel holds them.
    pub fn installed_keys(&self) -> Result<(BTreeSet<LbKey>, BTreeSet<LbKey>), XdpError> {
        let read = |map: &HashMap<MapData, LbKey, u32>, name| {
            map.keys()
                .map(|key| key.map_err(map_error(name)))
                .collect::<Result<BTreeSet<_>, _>>()
        };
        Ok((
            read(&self.lb_dst, MAP_LB_DST)?,
            read(&self.lb_src, MAP_LB_SRC)?,
        ))
    }

    /// Sums the per-CPU counters.
    pub fn stats(&self) -> Result<XdpStats, XdpError> {
        let sum = |index: u32| -> Result<u64, XdpError> {
            let per_cpu = self.stats.get(&index, 0).map_err(map_error(MAP_STATS))?;
            Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(XdpStats {
            redirected: sum(STAT_REDIRECTED)?,
            passed: sum(STAT_PASSED)?.wrapping_add(sum(STAT_NOT_PARSED)?),
            no_socket: sum(STAT_NO_SOCKET)?,
        })
    }
}

impl Drop for XdpRedirect {
    fn drop(&mut self) {
        // Explicit rather than left to field drop order: each link is detached before the
        // program is unloaded, and a failure is at least logged.
        for (link, interface) in self.links.drain(..).zip(&self.interfaces) {
            match link.detach() {
                Ok(()) => log::info!(
                    "XDP program {PROGRAM_NAME} detached from {}",
                    interface.name
                ),
                Err(error) => log::warn!(
                    "detaching XDP from {} failed: {error}; check `ip link show dev {}`",
                    interface.name,
                    interface.name
                ),
            }
        }
    }
}

fn validate_names(interfaces: &[String]) -> Result<(), XdpError> {
    if interfaces.is_empty() {
        return Err(XdpError::NoInterfaces);
    }
    if interfaces.len() > MAX_IFACES as usize {
        return Err(XdpError::TooManyInterfaces {
            count: interfaces.len(),
            max: MAX_IFACES,
        });
    }
    let mut seen = BTreeSet::new();
    for name in interfaces {
        if !seen.insert(name.as_str()) {
            return Err(XdpError::DuplicateInterface { name: name.clone() });
        }
    }
    Ok(())
}

/// Attaches natively, or in generic mode when the driver cannot; never replaces a program.
fn attach_one(
    program: &mut Xdp,
    name: &str,
    ifindex: u32,
) -> Result<(XdpLink, AttachMode), XdpError> {
    let native = match program.attach_to_if_index(ifindex, XdpMode::Driver) {
        Ok(id) => return Ok((take_link(program, id)?, AttachMode::Native)),
        Err(error) => error,
    };
    if is_busy(&native) {
        return Err(busy(name, &native));
    }
    log::warn!(
        "native XDP on {name} failed ({native}); falling back to generic (skb) mode, which is \
         slower and sees GSO super-frames unless `ethtool -K {name} gso off tso off`"
    );
    match program.attach_to_if_index(ifindex, XdpMode::Skb) {
        Ok(id) => Ok((take_link(program, id)?, AttachMode::Generic)),
        Err(generic) if is_busy(&generic) => Err(busy(name, &generic)),
        Err(generic) => Err(XdpError::Attach {
            name: name.to_owned(),
            native: Box::new(native),
            generic: Box::new(generic),
        }),
    }
}

/// Moves the link out of the program so that [`XdpRedirect`] owns its lifetime.
fn take_link(program: &mut Xdp, id: aya::programs::xdp::XdpLinkId) -> Result<XdpLink, XdpError> {
    program
        .take_link(id)
        .map_err(|e| XdpError::Verify(Box::new(e)))
}

/// EBUSY: a program (or link) holds the mode we asked for. EEXIST: a program runs in the other
/// mode ("native and generic XDP can't be active at the same time").
fn is_busy(error: &ProgramError) -> bool {
    let errno = match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::XdpError::NetlinkError(e)) => e.raw_os_error(),
        _ => None,
    };
    matches!(errno, Some(libc::EBUSY) | Some(libc::EEXIST))
}

fn busy(name: &str, error: &ProgramError) -> XdpError {
    XdpError::AlreadyAttached {
        name: name.to_owned(),
        detail: format!(" (the kernel refused a second one: {error})"),
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, XdpError> {
    ebpf.take_map(name)
        .ok_or(XdpError::ObjectMismatch { what: "map", name })
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |source| XdpError::Map { map, source }
}

/// What one key map needs to reach a wanted set.
struct KeyDelta {
    name: &'static str,
    missing: Vec<LbKey>,
    stale: Vec<LbKey>,
    present: usize,
}

impl KeyDelta {
    fn read(
        map: &HashMap<MapData, LbKey, u32>,
        name: &'static str,
        want: &BTreeSet<LbKey>,
    ) -> Result<KeyDelta, XdpError> {
        let mut current = BTreeSet::new();
        for key in map.keys() {
            current.insert(key.map_err(map_error(name))?);
        }
        Ok(KeyDelta {
            name,
            missing: want.difference(&current).copied().collect(),
            stale: current.difference(want).copied().collect(),
            present: current.len(),
        })
    }

    fn add(&mut self, map: &mut HashMap<MapData, LbKey, u32>) -> Result<(), XdpError> {
        if self.present + self.missing.len() > MAX_KEYS {
            log::warn!(
                "BPF map {}: old and new keys do not fit together ({} + {} > {MAX_KEYS}); \
                 removing stale keys before adding, so replaced keys miss packets briefly",
                self.name,
                self.present,
                self.missing.len()
            );
            self.remove(map)?;
        }
        for key in &self.missing {
            map.insert(key, 0, 0).map_err(map_error(self.name))?;
        }
        Ok(())
    }

    /// Removes the stale keys (once: a second call finds none left).
    fn remove(&mut self, map: &mut HashMap<MapData, LbKey, u32>) -> Result<(), XdpError> {
        for key in self.stale.drain(..) {
            match map.remove(&key) {
                Ok(()) => {}
                // Already gone: the goal state is reached.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    return Err(XdpError::Map {
                        map: self.name,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}
