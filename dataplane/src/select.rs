//! Endpoint selection for new flows: loxilb's five `sel` algorithms, pure and allocation-free
//! when picking.
//!
//! The work is split the way the snapshot and the workers are:
//!
//! - [`ServiceSelector`] is immutable and built off the hot path, once per service per
//!   publication: the algorithm, the endpoint identities and effective weights, and for
//!   [`Algorithm::Hash`] and [`Algorithm::Persist`] a Maglev lookup table. It belongs in the
//!   snapshot.
//! - [`SelectorState`] is mutable and owned by one worker, one per service: the rotation
//!   cursor, the smooth weighted round robin's current weights, the active-flow counts for
//!   least connections and the persistence cache. It is built once with fixed capacity.
//!   With several workers, round robin's cursor and least connections' counts must span all
//!   of them (a client's connections spread over workers): states built with
//!   [`SelectorState::with_shared`] keep those two in a [`SharedSelection`] instead.
//!
//! [`SelectorState::pick`] takes both, the flow's tuple, a liveness predicate (an endpoint for
//! which it returns false is never chosen) and the clock, and returns an index into the
//! selector's endpoint list, or `None` when no endpoint may be chosen. It does not allocate,
//! except once after the selector's endpoint list changed (see below).
//!
//! A state survives publications: each selector carries a fingerprint of its endpoint list,
//! and when a state is used with a selector of another fingerprint it first remaps its
//! per-endpoint data by endpoint identity (address and port), so active-flow counts follow
//! their endpoint even if indices move. That remap may allocate if the list grew; the smooth
//! round robin restarts from zero; rotation and persisted clients carry over.
//!
//! Weights: [`Algorithm::Weighted`], [`Algorithm::Hash`] and [`Algorithm::Persist`] honour
//! them, and never choose an endpoint of weight 0 (it is draining), unless every endpoint has
//! weight 0, in which case all count as weight 1. Round robin and least connections ignore
//! weights, as loxilb does.
//!
//! Hashing is a fixed function defined here (SipHash-1-3 with fixed keys over a fixed byte
//! layout, see [`flow_hash`]), never std's `RandomState`, so a given tuple maps to the same
//! endpoint on every worker, every restart and every release. Tests freeze its outputs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Maglev table size used unless a service asks otherwise; prime, as katran's.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Most endpoints a service may have: table entries are `u16` and one value is reserved.
pub const MAX_ENDPOINTS: usize = u16::MAX as usize;
/// Largest Maglev table accepted; bounds the memory one service can take (table entries are
/// two bytes).
pub const MAX_TABLE_SIZE: u32 = 16_777_213;
/// Entries looked at in one persistence-cache bucket: the cost bound of a lookup.
pub const PERSIST_WAYS: usize = 4;
/// Table slots tried, after the first, when a hashed flow's slot belongs to an endpoint that
/// may not be chosen; after them a scan of the choosable endpoints decides.
const HASH_PROBES: u64 = 8;
const NO_ENDPOINT: u16 = u16::MAX;

// Fixed SipHash keys, one per use, so equal inputs in different roles hash independently.
// Arbitrary values; changing any of them changes every mapping and is a compatibility break.
const FLOW_KEY: (u64, u64) = (0x6f78_6c62_2d66_6c6f, 0x772d_7475_706c_6531);
const CLIENT_KEY: (u64, u64) = (0x6f78_6c62_2d63_6c69, 0x656e_742d_6970_7631);
const OFFSET_KEY: (u64, u64) = (0x6f78_6c62_2d6d_6167, 0x6c65_762d_6f66_6631);
const SKIP_KEY: (u64, u64) = (0x6f78_6c62_2d6d_6167, 0x6c65_762d_736b_6931);
const FINGERPRINT_KEY: (u64, u64) = (0x6f78_6c62_2d66_696e, 0x6765_7270_7269_6e74);

/// loxilb's `sel` values, in its numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// sel 0: strict rotation over the live endpoints.
    RoundRobin,
    /// sel 1: Maglev consistent hashing of the 5-tuple.
    Hash,
    /// sel 2: smooth weighted round robin; any `sum(weights)` consecutive picks split exactly
    /// by weight.
    Weighted,
    /// sel 3: a client address sticks to one endpoint while it keeps opening flows within
    /// the service's persistence timeout.
    Persist,
    /// sel 4: the live endpoint with the fewest active flows on this worker.
    LeastConnections,
}

impl Algorithm {
    /// The algorithm for loxilb's `sel` number.
    pub fn from_loxilb_sel(sel: u8) -> Option<Algorithm> {
        Some(match sel {
            0 => Algorithm::RoundRobin,
            1 => Algorithm::Hash,
            2 => Algorithm::Weighted,
            3 => Algorithm::Persist,
            4 => Algorithm::LeastConnections,
            _ => return None,
        })
    }

    /// Whether the algorithm looks flows up in a Maglev table.
    pub fn uses_table(self) -> bool {
        matches!(self, Algorithm::Hash | Algorithm::Persist)
    }

    fn honours_weights(self) -> bool {
        matches!(
            self,
            Algorithm::Hash | Algorithm::Weighted | Algorithm::Persist
        )
    }
}

/// An endpoint's identity: what Maglev permutations and persisted clients are keyed by, so
/// they do not depend on the endpoint's position in the list. IPv4 is IPv4-mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: [u8; 16],
    pub port: u16,
}

impl EndpointKey {
    pub fn v4(addr: Ipv4Addr, port: u16) -> EndpointKey {
        EndpointKey {
            addr: addr.to_ipv6_mapped().octets(),
            port,
        }
    }

    /// Either family; IPv4 is mapped as in [`EndpointKey::v4`].
    pub fn new(addr: IpAddr, port: u16) -> EndpointKey {
        EndpointKey {
            addr: mapped(addr),
            port,
        }
    }
}

/// An address as 16 bytes: IPv6 as it is, IPv4 as IPv4-mapped IPv6.
fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An endpoint as the selector is given it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightedEndpoint {
    pub key: EndpointKey,
    pub weight: u8,
}

/// What a new flow is selected by. IPv4 addresses are IPv4-mapped (`::ffff:a.b.c.d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl FlowTuple {
    pub fn v4(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, proto: u8) -> Self {
        FlowTuple {
            src: src.to_ipv6_mapped().octets(),
            dst: dst.to_ipv6_mapped().octets(),
            src_port,
            dst_port,
            proto,
        }
    }

    /// Either family (both addresses of one packet share it).
    pub fn new(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> Self {
        FlowTuple {
            src: mapped(src),
            dst: mapped(dst),
            src_port,
            dst_port,
            proto,
        }
    }
}

/// The hash of a flow, stable forever: SipHash-1-3 keyed with `FLOW_KEY` over the 37 bytes
/// `src (16) ‖ dst (16) ‖ src_port (2, big endian) ‖ dst_port (2, big endian) ‖ proto (1)`.
///
/// SipHash because it is a published, exactly specified function with good mixing in every
/// output bit (the table index is `hash % size`), short to write out and check against the
/// reference vectors; 1-3 rounds because the key is public anyway: this is about spread and
/// stability, not secrecy. Changing anything here is a compatibility break: flows of hashed
/// services would move to other endpoints after an upgrade.
pub fn flow_hash(t: &FlowTuple) -> u64 {
    let mut msg = [0u8; 37];
    msg[..16].copy_from_slice(&t.src);
    msg[16..32].copy_from_slice(&t.dst);
    msg[32..34].copy_from_slice(&t.src_port.to_be_bytes());
    msg[34..36].copy_from_slice(&t.dst_port.to_be_bytes());
    msg[36] = t.proto;
    siphash::<1, 3>(FLOW_KEY, &msg)
}

/// The hash of a client address for persistence, stable forever: SipHash-1-3 keyed with
/// `CLIENT_KEY` over the 16 address bytes.
pub fn client_hash(addr: &[u8; 16]) -> u64 {
    siphash::<1, 3>(CLIENT_KEY, addr)
}

/// Why a selector cannot be built from a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("Maglev table size {0} is not a prime number; use a prime such as 65537")]
    TableSizeNotPrime(u32),
    #[error(
        "Maglev table size {size} is smaller than the {endpoints} endpoints it must hold; \
         use a prime of at least {endpoints}"
    )]
    TableTooSmall { size: u32, endpoints: usize },
    #[error("Maglev table size {0} is larger than the maximum of {MAX_TABLE_SIZE}")]
    TableTooLarge(u32),
    #[error("{0} endpoints is more than the {MAX_ENDPOINTS} a service may have")]
    TooManyEndpoints(usize),
    #[error("endpoint {index} repeats the address and port of an earlier endpoint")]
    DuplicateEndpoint { index: usize },
}

/// The immutable part of a service's selection, built off the hot path.
#[derive(Debug, Clone)]
pub struct ServiceSelector {
    algorithm: Algorithm,
    endpoints: Box<[EndpointKey]>,
    /// Effective weights: as given, or all 1 when all are 0; all 1 when the algorithm
    /// ignores weights.
    weights: Box<[u32]>,
    /// Endpoint identities sorted, with their index: lookup by identity and the order in
    /// which the Maglev table is filled (so the table does not depend on list order).
    sorted: Box<[(EndpointKey, u16)]>,
    /// Maglev table of endpoint indices; empty unless the algorithm uses one.
    table: Box<[u16]>,
    fingerprint: u64,
}

impl ServiceSelector {
    /// Builds the selector of one service. `table_size` is the Maglev table size (a prime, at
    /// least the number of endpoints); it is only checked and used by the algorithms that
    /// hash ([`Algorithm::uses_table`]).
    pub fn new(
        algorithm: Algorithm,
        endpoints: &[WeightedEndpoint],
        table_size: u32,
    ) -> Result<ServiceSelector, SelectorError> {
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(SelectorError::TooManyEndpoints(endpoints.len()));
        }
        let mut sorted: Vec<(EndpointKey, u16)> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key, i as u16))
            .collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(SelectorError::DuplicateEndpoint {
                index: usize::from(w[0].1.max(w[1].1)),
            });
        }
        let all_zero = endpoints.iter().all(|e| e.weight == 0);
        let weights: Box<[u32]> = endpoints
            .iter()
            .map(|e| {
                if all_zero || !algorithm.honours_weights() {
                    1
                } else {
                    u32::from(e.weight)
                }
            })
            .collect();
        let table = if algorithm.uses_table() && !endpoints.is_empty() {
            if table_size > MAX_TABLE_SIZE {
                return Err(SelectorError::TableTooLarge(table_size));
            }
            if !is_prime(table_size) {
                return Err(SelectorError::TableSizeNotPrime(table_size));
            }
            if (table_size as usize) < endpoints.len() {
                return Err(SelectorError::TableTooSmall {
                    size: table_size,
                    endpoints: endpoints.len(),
                });
            }
            maglev_table(&sorted, &weights, table_size)
        } else {
            Box::default()
        };
        let mut print = Vec::with_capacity(1 + endpoints.len() * 22);
        print.push(algorithm as u8);
        for (e, w) in endpoints.iter().zip(weights.iter()) {
            print.extend_from_slice(&e.key.addr);
            print.extend_from_slice(&e.key.port.to_be_bytes());
            print.extend_from_slice(&w.to_be_bytes());
        }
        Ok(ServiceSelector {
            algorithm,
            endpoints: endpoints.iter().map(|e| e.key).collect(),
            weights,
            sorted: sorted.into_boxed_slice(),
            table,
            fingerprint: siphash::<1, 3>(FINGERPRINT_KEY, &print),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoint(&self, index: usize) -> Option<EndpointKey> {
        self.endpoints.get(index).copied()
    }

    /// The index of the endpoint with this identity, e.g. to report a closed flow whose
    /// endpoint was recorded before the latest publication.
    pub fn index_of(&self, key: &EndpointKey) -> Option<usize> {
        self.sorted
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| usize::from(self.sorted[i].1))
    }

    /// The Maglev table (endpoint index per slot); empty unless the algorithm hashes.
    pub fn table(&self) -> &[u16] {
        &self.table
    }

    /// The endpoint owning the table slot of `hash`, ignoring liveness: one index.
    pub fn table_lookup(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let owner = self.table[(hash % self.table.len() as u64) as usize];
        (owner != NO_ENDPOINT).then_some(usize::from(owner))
    }

    fn choosable(&self, i: usize, live: &impl Fn(usize) -> bool) -> bool {
        self.weights[i] > 0 && live(i)
    }

    /// Maglev lookup that steps around endpoints that may not be chosen: their flows spread
    /// over the others by the table (so by weight), while every other flow keeps its
    /// endpoint.
    fn hash_pick(&self, hash: u64, live: &impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.table_lookup(hash)?;
        if self.choosable(first, live) {
            return Some(first);
        }
        for probe in 1..=HASH_PROBES {
            let ep = self.table_lookup(mix64(
                hash.wrapping_add(probe.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ))?;
            if self.choosable(ep, live) {
                return Some(ep);
            }
        }
        let choosable = (0..self.len()).filter(|&i| self.choosable(i, live)).count();
        if choosable == 0 {
            return None;
        }
        (0..self.len())
            .filter(|&i| self.choosable(i, live))
            .nth((hash % choosable as u64) as usize)
    }
}

/// Fills a Maglev table the katran way: endpoints take turns, in identity order, each
/// claiming the next free slot of its own permutation of the table; an endpoint claims a
/// turn each time its accumulated weight reaches the largest weight, so claims (and slots)
/// are proportional to weights and weight 0 claims none.
fn maglev_table(sorted: &[(EndpointKey, u16)], weights: &[u32], size: u32) -> Box<[u16]> {
    let m = u64::from(size);
    let mut table = vec![NO_ENDPOINT; size as usize].into_boxed_slice();
    let max_weight = weights.iter().copied().max().unwrap_or(0);
    if max_weight == 0 {
        return table;
    }
    // Per endpoint in identity order: the current position in its permutation, its skip,
    // and its accumulated weight.
    let mut walkers: Vec<(u64, u64, u32)> = sorted
        .iter()
        .map(|(key, _)| {
            let mut id = [0u8; 18];
            id[..16].copy_from_slice(&key.addr);
            id[16..].copy_from_slice(&key.port.to_be_bytes());
            let offset = siphash::<1, 3>(OFFSET_KEY, &id) % m;
            let skip = if m > 1 {
                siphash::<1, 3>(SKIP_KEY, &id) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip, 0)
        })
        .collect();
    let mut filled = 0u64;
    loop {
        for ((_, index), walker) in sorted.iter().zip(walkers.iter_mut()) {
            let weight = weights[usize::from(*index)];
            if weight == 0 {
                continue;
            }
            walker.2 += weight;
            if walker.2 < max_weight {
                continue;
            }
            walker.2 -= max_weight;
            // The permutation visits every slot (size is prime, skip is in 1..size), so a
            // free slot is found while any is left.
            loop {
                let slot = walker.0 as usize;
                walker.0 = (walker.0 + walker.1) % m;
                if table[slot] == NO_ENDPOINT {
                    table[slot] = *index;
                    break;
                }
            }
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// One remembered client of a persisting service.
#[derive(Debug, Clone, Copy)]
struct PersistEntry {
    client: [u8; 16],
    endpoint: EndpointKey,
    /// The endpoint's index when stored: checked against the identity before use.
    hint: u16,
    /// Free when not after now.
    expires_at: u64,
}

const FREE_ENTRY: PersistEntry = PersistEntry {
    client: [0; 16],
    endpoint: EndpointKey {
        addr: [0; 16],
        port: 0,
    },
    hint: 0,
    expires_at: 0,
};

/// The part of one service's selection state that all workers share, so that round robin
/// rotates and least connections counts across workers as one: with several queues a
/// client's successive connections land on different workers.
#[derive(Debug, Default)]
pub struct SharedSelection {
    /// Next index round robin starts from.
    cursor: AtomicUsize,
    /// Active flows per endpoint, by identity (indices move between publications). Touched
    /// once per new and per ended flow of least-connections services only.
    active: Mutex<std::collections::HashMap<EndpointKey, u32>>,
}

impl SharedSelection {
    fn count(&self, key: &EndpointKey, change: impl FnOnce(u32) -> u32) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let n = active.entry(*key).or_insert(0);
        *n = change(*n);
        if *n == 0 {
            active.remove(key);
        }
    }
}

/// Per-worker, per-service mutable selection state.
#[derive(Debug, Clone)]
pub struct SelectorState {
    /// Fingerprint of the selector the per-endpoint vectors are laid out for.
    fingerprint: u64,
    endpoints: Vec<EndpointKey>,
    /// Next index round robin (and least connections' tie-break) starts from.
    cursor: usize,
    /// Smooth weighted round robin's current weights.
    current: Vec<i64>,
    /// Active flows per endpoint opened through this worker.
    active: Vec<u32>,
    /// Spare vector for remapping `active` without allocating.
    spare: Vec<u32>,
    /// Set-associative cache of `PERSIST_WAYS`-entry buckets, a power of two of them.
    persist: Box<[PersistEntry]>,
    /// With several workers: the rotation and flow counts they share, used instead of
    /// `cursor` and `active` by round robin and least connections.
    shared: Option<Arc<SharedSelection>>,
}

impl SelectorState {
    /// State for `sel` that remembers up to `persist_capacity` clients (rounded up to whole
    /// buckets) if the service persists; other algorithms keep none.
    pub fn new(sel: &ServiceSelector, persist_capacity: usize) -> SelectorState {
        let entries = if sel.algorithm == Algorithm::Persist && persist_capacity > 0 {
            persist_capacity.div_ceil(PERSIST_WAYS).next_power_of_two() * PERSIST_WAYS
        } else {
            0
        };
        SelectorState {
            fingerprint: sel.fingerprint,
            endpoints: sel.endpoints.to_vec(),
            cursor: 0,
            current: vec![0; sel.len()],
            active: vec![0; sel.len()],
            spare: Vec::with_capacity(sel.len()),
            persist: vec![FREE_ENTRY; entries].into_boxed_slice(),
            shared: None,
        }
    }

    /// Like [`SelectorState::new`], but rotating and counting flows together with every
    /// other state given the same `shared`.
    pub fn with_shared(
        sel: &ServiceSelector,
        persist_capacity: usize,
        shared: Arc<SharedSelection>,
    ) -> SelectorState {
        SelectorState {
            shared: Some(shared),
            ..SelectorState::new(sel, persist_capacity)
        }
    }

    /// Chooses the endpoint of a new flow: an index into `sel`'s endpoints for which `live`
    /// is true, or `None` if there is none to choose. `now_ms` is the worker's clock and
    /// `persist_ms` how long a persisting client is remembered after its last new flow.
    pub fn pick(
        &mut self,
        sel: &ServiceSelector,
        tuple: &FlowTuple,
        live: impl Fn(usize) -> bool,
        now_ms: u64,
        persist_ms: u64,
    ) -> Option<usize> {
        self.sync(sel);
        if sel.is_empty() {
            return None;
        }
        match sel.algorithm {
            Algorithm::RoundRobin => match &self.shared {
                Some(shared) => {
                    let n = sel.len();
                    let mut cursor = shared.cursor.load(Ordering::Relaxed);
                    loop {
                        let ep = next_live(cursor % n, n, &live)?;
                        // Another worker may have rotated meanwhile: retry from its cursor,
                        // so no endpoint is skipped or taken twice in a row.
                        match shared.cursor.compare_exchange_weak(
                            cursor,
                            (ep + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => return Some(ep),
                            Err(now) => cursor = now,
                        }
                    }
                }
                None => {
                    let ep = next_live(self.cursor, sel.len(), &live)?;
                    self.cursor = (ep + 1) % sel.len();
                    Some(ep)
                }
            },
            Algorithm::Hash => sel.hash_pick(flow_hash(tuple), &live),
            Algorithm::Weighted => self.smooth_weighted(sel, &live),
            Algorithm::Persist => self.persist(sel, &tuple.src, &live, now_ms, persist_ms),
            Algorithm::LeastConnections => {
                let n = sel.len();
                let mut best: Option<(usize, u32)> = None;
                let shared = self
                    .shared
                    .as_ref()
                    .map(|s| s.active.lock().unwrap_or_else(|e| e.into_inner()));
                for step in 0..n {
                    let i = (self.cursor + step) % n;
                    let flows = match &shared {
                        Some(active) => active.get(&sel.endpoints[i]).copied().unwrap_or(0),
                        None => self.active[i],
                    };
                    if live(i) && best.is_none_or(|(_, least)| flows < least) {
                        best = Some((i, flows));
                    }
                }
                drop(shared);
                let (ep, _) = best?;
                self.cursor = (ep + 1) % n;
                Some(ep)
            }
        }
    }

    /// Takes back the pick of `ep` that [`SelectorState::pick`] just returned, because no flow
    /// came of it (the packet was dropped after the choice: no SNAT port, a full table): the
    /// endpoint whose turn it was keeps its turn, so a rotation skips nobody. `live` must be
    /// what the pick was given. Only the rotating algorithms keep such a turn.
    pub fn unpick(&mut self, sel: &ServiceSelector, ep: usize, live: impl Fn(usize) -> bool) {
        let n = sel.len();
        if ep >= n {
            return;
        }
        match sel.algorithm {
            Algorithm::RoundRobin => match &self.shared {
                // Unless another worker has rotated since: its pick stands.
                Some(shared) => {
                    let _ = shared.cursor.compare_exchange(
                        (ep + 1) % n,
                        ep,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                None => self.cursor = ep,
            },
            Algorithm::Weighted => {
                let mut total = 0i64;
                for i in (0..n).filter(|&i| sel.choosable(i, &live)) {
                    let w = i64::from(sel.weights[i]);
                    self.current[i] -= w;
                    total += w;
                }
                self.current[ep] += total;
            }
            Algorithm::Hash | Algorithm::Persist | Algorithm::LeastConnections => {}
        }
    }

    /// Counts a flow opened to endpoint `ep` of `sel` (for least connections).
    pub fn on_flow_open(&mut self, sel: &ServiceSelector, ep: usize) {
        self.sync(sel);
        if let Some(n) = self.active.get_mut(ep) {
            *n = n.saturating_add(1);
        }
        if let (Some(shared), Some(key)) = (&self.shared, sel.endpoints.get(ep)) {
            if sel.algorithm == Algorithm::LeastConnections {
                shared.count(key, |n| n.saturating_add(1));
            }
        }
    }

    /// Counts a flow of endpoint `ep` of `sel` gone; see [`ServiceSelector::index_of`].
    pub fn on_flow_close(&mut self, sel: &ServiceSelector, ep: usize) {
        self.sync(sel);
        if let Some(n) = self.active.get_mut(ep) {
            *n = n.saturating_sub(1);
        }
        if let (Some(shared), Some(key)) = (&self.shared, sel.endpoints.get(ep)) {
            if sel.algorithm == Algorithm::LeastConnections {
                shared.count(key, |n| n.saturating_sub(1));
            }
        }
    }

    /// Active flows of endpoint `ep` as counted here.
    pub fn active_flows(&self, ep: usize) -> u32 {
        self.active.get(ep).copied().unwrap_or(0)
    }

    /// Clients remembered and not expired at `now_ms`.
    pub fn persisted_clients(&self, now_ms: u64) -> usize {
        self.persist
            .iter()
            .filter(|e| e.expires_at > now_ms)
            .count()
    }

    /// Lays per-endpoint data out for `sel` if it was laid out for another endpoint list.
    fn sync(&mut self, sel: &ServiceSelector) {
        if self.fingerprint == sel.fingerprint && self.endpoints.len() == sel.len() {
            return;
        }
        self.spare.clear();
        self.spare.resize(sel.len(), 0);
        for (key, &flows) in self.endpoints.iter().zip(self.active.iter()) {
            if let Some(i) = sel.index_of(key) {
                self.spare[i] = flows;
            }
        }
        std::mem::swap(&mut self.active, &mut self.spare);
        self.endpoints.clear();
        self.endpoints.extend_from_slice(&sel.endpoints);
        self.current.clear();
        self.current.resize(sel.len(), 0);
        self.cursor = if sel.is_empty() {
            0
        } else {
            self.cursor % sel.len()
        };
        self.fingerprint = sel.fingerprint;
    }

    /// nginx's smooth weighted round robin: every choosable endpoint gains its weight, the
    /// richest (lowest index on ties) is chosen and pays the total. With a fixed set the
    /// sequence repeats every `sum(weights)` picks, each period holding exactly `weight`
    /// picks of each endpoint, so any window of that length splits exactly by weight.
    fn smooth_weighted(
        &mut self,
        sel: &ServiceSelector,
        live: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..sel.len() {
            if !sel.choosable(i, live) {
                continue;
            }
            let w = i64::from(sel.weights[i]);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let ep = best?;
        self.current[ep] -= total;
        Some(ep)
    }

    fn persist(
        &mut self,
        sel: &ServiceSelector,
        client: &[u8; 16],
        live: &impl Fn(usize) -> bool,
        now_ms: u64,
        persist_ms: u64,
    ) -> Option<usize> {
        let hash = client_hash(client);
        if self.persist.is_empty() {
            return sel.hash_pick(hash, live);
        }
        let buckets = self.persist.len() / PERSIST_WAYS;
        // High bits for the bucket: the low ones pick the table slot.
        let first = ((hash >> 32) as usize & (buckets - 1)) * PERSIST_WAYS;
        let bucket = &mut self.persist[first..first + PERSIST_WAYS];
        let expires_at = now_ms.saturating_add(persist_ms);
        let mut free: Option<usize> = None;
        for (way, entry) in bucket.iter_mut().enumerate() {
            if entry.expires_at <= now_ms {
                free = free.or(Some(way));
                continue;
            }
            if entry.client != *client {
                continue;
            }
            let index = match sel.endpoints.get(usize::from(entry.hint)) {
                Some(k) if *k == entry.endpoint => Some(usize::from(entry.hint)),
                _ => sel.index_of(&entry.endpoint),
            };
            if let Some(ep) = index.filter(|&ep| sel.choosable(ep, live)) {
                entry.expires_at = expires_at;
                entry.hint = ep as u16;
                return Some(ep);
            }
            // Its endpoint is gone or down: choose again, into this entry (kept if there is
            // nothing to choose, so a brief outage of every endpoint forgets no client).
            free = Some(way);
            break;
        }
        let ep = sel.hash_pick(hash, live)?;
        if let Some(way) = free {
            bucket[way] = PersistEntry {
                client: *client,
                endpoint: sel.endpoints[ep],
                hint: ep as u16,
                expires_at,
            };
        }
        Some(ep)
    }
}

/// The first index from `cursor` on (wrapping over `n`) for which `live` holds.
fn next_live(cursor: usize, n: usize, live: &impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|step| (cursor + step) % n).find(|&i| live(i))
}

/// splitmix64's finaliser: spreads a 64-bit value over all bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d: &u64| d * d <= n).all(|d| n % d != 0)
}

/// SipHash-c-d (Aumasson and Bernstein), 64-bit output, over `msg` with key `(k0, k1)` as
/// the two little-endian halves of the 128-bit key.
fn siphash<const C: usize, const D: usize>((k0, k1): (u64, u64), msg: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut words = msg.chunks_exact(8);
    for word in &mut words {
        let m = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        v[3] ^= m;
        for _ in 0..C {
            sip_round(&mut v);
        }
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let tail = words.remainder();
    last[..tail.len()].copy_from_slice(tail);
    last[7] = msg.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    for _ in 0..C {
        sip_round(&mut v);
    }
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..D {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference key 00..0f of the SipHash paper.
    const REFERENCE_KEY: (u64, u64) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);

    #[test]
    fn siphash_2_4_matches_the_reference_vectors() {
        // The same rounds code serves SipHash-1-3; the published vectors are for 2-4.
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash::<2, 4>(REFERENCE_KEY, &[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash::<2, 4>(REFERENCE_KEY, &msg), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn primes_are_recognised() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_535));
        assert!(is_prime(MAX_TABLE_SIZE));
    }
}
