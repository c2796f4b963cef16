//! Endpoint selection: frozen hash mappings, Maglev disruption and weights, exact weighted
//! splits, persistence, least connections, and liveness for every algorithm.

mod common;
use common::Rng;

use oxlb_dataplane::select::{
    client_hash, flow_hash, Algorithm, EndpointKey, FlowTuple, SelectorError, SelectorState,
    ServiceSelector, SharedSelection, WeightedEndpoint, DEFAULT_TABLE_SIZE, MAX_ENDPOINTS,
    PERSIST_WAYS,
};
use std::net::Ipv4Addr;

const ALL: [Algorithm; 5] = [
    Algorithm::RoundRobin,
    Algorithm::Hash,
    Algorithm::Weighted,
    Algorithm::Persist,
    Algorithm::LeastConnections,
];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const TCP: u8 = 6;
const PERSIST_MS: u64 = 60_000;

fn endpoint(last: u8, weight: u8) -> WeightedEndpoint {
    WeightedEndpoint {
        key: EndpointKey::v4(Ipv4Addr::new(10, 0, 0, last), 8080),
        weight,
    }
}

/// Endpoints 10.0.0.1..=n, port 8080, weight 1.
fn endpoints(n: u8) -> Vec<WeightedEndpoint> {
    (1..=n).map(|i| endpoint(i, 1)).collect()
}

fn weighted(weights: &[u8]) -> Vec<WeightedEndpoint> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| endpoint(i as u8 + 1, w))
        .collect()
}

fn selector(alg: Algorithm, eps: &[WeightedEndpoint]) -> ServiceSelector {
    ServiceSelector::new(alg, eps, DEFAULT_TABLE_SIZE).expect("valid selector")
}

/// The fixed tuples of the frozen tests: seven clients, varying source ports.
fn fixed_tuple(i: u16) -> FlowTuple {
    FlowTuple::v4(
        Ipv4Addr::new(192, 0, 2, (i % 7) as u8 + 1),
        40000 + i * 7,
        VIP,
        80,
        TCP,
    )
}

fn client_tuple(client: u32, port: u16) -> FlowTuple {
    FlowTuple::v4(Ipv4Addr::from(0xc000_0200 + client), port, VIP, 80, TCP)
}

fn all_live(_: usize) -> bool {
    true
}

/// Picks `n` times for fresh tuples and counts picks per endpoint.
fn spread(sel: &ServiceSelector, st: &mut SelectorState, n: u32) -> Vec<u32> {
    let mut counts = vec![0; sel.len()];
    for i in 0..n {
        let ep = st
            .pick(sel, &client_tuple(i, 1024 + i as u16), all_live, 0, 0)
            .expect("an endpoint");
        counts[ep] += 1;
    }
    counts
}

/// Slot owners as endpoint identities, to compare tables of different endpoint lists.
fn owners(sel: &ServiceSelector) -> Vec<EndpointKey> {
    sel.table()
        .iter()
        .map(|&i| sel.endpoint(usize::from(i)).expect("every slot filled"))
        .collect()
}

// --- Frozen mappings. These values were generated once from this implementation and frozen:
// --- if one of these tests fails, flows of hashed or persisting services would land on other
// --- endpoints after an upgrade. Changing the expected values is a compatibility break and
// --- must be called out in the release notes.

#[test]
fn flow_and_client_hashes_of_fixed_inputs_never_change() {
    let flows: Vec<u64> = (0..4).map(|i| flow_hash(&fixed_tuple(i))).collect();
    assert_eq!(
        flows,
        [
            0x5921_d5db_3b71_37a1,
            0x7e21_e17c_4edb_8ee9,
            0xa32a_2490_5065_9ece,
            0x61e9_412a_4b06_7a14,
        ]
    );
    let clients: Vec<u64> = (1..4)
        .map(|i| client_hash(&Ipv4Addr::new(192, 0, 2, i).to_ipv6_mapped().octets()))
        .collect();
    assert_eq!(
        clients,
        [
            0x6b6d_d06d_b3db_1a4c,
            0xa5b0_6037_c177_0084,
            0xf56d_6a3e_8589_81c9,
        ]
    );
}

#[test]
fn maglev_table_of_five_endpoints_in_thirteen_slots_never_changes() {
    let sel = ServiceSelector::new(Algorithm::Hash, &endpoints(5), 13).unwrap();
    assert_eq!(sel.table(), [3, 2, 0, 4, 3, 1, 4, 2, 0, 2, 0, 1, 1]);
}

#[test]
fn hashed_endpoints_of_twenty_fixed_tuples_never_change() {
    // Five endpoints 10.0.0.1..5:8080 of weight 1, the default table: index i is 10.0.0.(i+1).
    let sel = selector(Algorithm::Hash, &endpoints(5));
    let mut st = SelectorState::new(&sel, 0);
    let picks: Vec<usize> = (0..20)
        .map(|i| st.pick(&sel, &fixed_tuple(i), all_live, 0, 0).unwrap())
        .collect();
    assert_eq!(
        picks,
        [4, 1, 3, 2, 1, 4, 2, 1, 3, 0, 0, 4, 3, 4, 2, 0, 1, 2, 4, 3]
    );
}

#[test]
fn persisting_clients_first_endpoints_never_change() {
    let sel = selector(Algorithm::Persist, &endpoints(5));
    let mut st = SelectorState::new(&sel, 64);
    let picks: Vec<usize> = (0..10)
        .map(|c| {
            st.pick(&sel, &client_tuple(c, 1000), all_live, 0, PERSIST_MS)
                .unwrap()
        })
        .collect();
    // Clients 192.0.2.0..9 over the same five endpoints and table as above.
    assert_eq!(picks, [4, 1, 3, 3, 0, 2, 4, 1, 3, 3]);
}

// --- Maglev properties.

#[test]
fn maglev_table_does_not_depend_on_the_order_of_endpoints() {
    let eps = weighted(&[3, 1, 2, 5, 1, 4]);
    let mut reversed = eps.clone();
    reversed.reverse();
    let a = ServiceSelector::new(Algorithm::Hash, &eps, 1031).unwrap();
    let b = ServiceSelector::new(Algorithm::Hash, &reversed, 1031).unwrap();
    assert_eq!(owners(&a), owners(&b));
}

#[test]
fn equal_weights_fill_the_table_evenly() {
    let sel = selector(Algorithm::Hash, &endpoints(5));
    let mut counts = [0u32; 5];
    for &i in sel.table() {
        counts[usize::from(i)] += 1;
    }
    // 65537 = 5 * 13107 + 2.
    assert!(
        counts.iter().all(|&c| c == 13107 || c == 13108),
        "{counts:?}"
    );
}

fn removal_moves_about_one_nth(n: u8) {
    let all = endpoints(n);
    let before = owners(&selector(Algorithm::Hash, &all));
    for removed in 0..usize::from(n) {
        let mut rest = all.clone();
        rest.remove(removed);
        let after = owners(&selector(Algorithm::Hash, &rest));
        let gone = all[removed].key;
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let moved_elsewhere = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **b != gone)
            .count();
        let slots = before.len() as f64;
        assert!(
            moved as f64 <= 1.3 * slots / f64::from(n),
            "removing endpoint {removed} of {n} moved {moved} of {slots} slots"
        );
        // Nearly all of the moves are the removed endpoint's own slots.
        assert!(
            (moved_elsewhere as f64) <= 0.3 * slots / f64::from(n),
            "removing endpoint {removed} of {n} moved {moved_elsewhere} other slots"
        );
    }
}

#[test]
fn removing_one_of_five_endpoints_moves_at_most_about_a_fifth_of_slots() {
    removal_moves_about_one_nth(5);
}

#[test]
fn removing_one_of_ten_endpoints_moves_at_most_about_a_tenth_of_slots() {
    removal_moves_about_one_nth(10);
}

#[test]
fn maglev_weights_80_and_20_fill_about_80_and_20_percent_of_slots() {
    let sel = selector(Algorithm::Hash, &weighted(&[80, 20]));
    let heavy = sel.table().iter().filter(|&&i| i == 0).count() as f64;
    let share = heavy / sel.table().len() as f64;
    assert!((share - 0.8).abs() < 0.01, "heavy endpoint holds {share}");
}

#[test]
fn hashing_gives_the_same_endpoint_for_a_tuple_on_every_worker() {
    let sel = selector(Algorithm::Hash, &endpoints(7));
    let mut a = SelectorState::new(&sel, 0);
    let mut b = SelectorState::new(&sel, 0);
    for i in 0..200 {
        let t = client_tuple(i % 13, 2000 + i as u16);
        assert_eq!(
            a.pick(&sel, &t, all_live, 0, 0),
            b.pick(&sel, &t, all_live, 0, 0)
        );
        assert_eq!(
            a.pick(&sel, &t, all_live, 0, 0),
            a.pick(&sel, &t, all_live, 0, 0)
        );
    }
}

#[test]
fn hashed_flows_of_a_down_endpoint_move_while_all_others_stay() {
    let sel = selector(Algorithm::Hash, &weighted(&[1, 1, 1, 1, 2]));
    let mut st = SelectorState::new(&sel, 0);
    let down = 2;
    let mut moved = vec![0u32; sel.len()];
    for i in 0..5000 {
        let t = client_tuple(i, 3000 + (i % 500) as u16);
        let before = st.pick(&sel, &t, all_live, 0, 0).unwrap();
        let after = st.pick(&sel, &t, |ep| ep != down, 0, 0).unwrap();
        assert_ne!(after, down);
        if before != down {
            assert_eq!(before, after, "a flow of a healthy endpoint moved");
        } else {
            moved[after] += 1;
        }
    }
    // The down endpoint's flows spread over the others by weight, not onto one neighbour.
    assert!(moved.iter().enumerate().all(|(i, &m)| i == down || m > 0));
    assert!(moved[4] > moved[0] && moved[4] > moved[1], "{moved:?}");
}

// --- Round robin, weighted, least connections.

#[test]
fn round_robin_rotates_strictly_over_live_endpoints() {
    let sel = selector(Algorithm::RoundRobin, &endpoints(4));
    let mut st = SelectorState::new(&sel, 0);
    let t = fixed_tuple(0);
    let picks: Vec<usize> = (0..8)
        .map(|_| st.pick(&sel, &t, all_live, 0, 0).unwrap())
        .collect();
    assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
    let picks: Vec<usize> = (0..6)
        .map(|_| st.pick(&sel, &t, |ep| ep != 1, 0, 0).unwrap())
        .collect();
    assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
}

/// Picks over `sel` where every third pick is taken back (its packet was dropped): the
/// picks that stand, which must be the sequence no drop would have disturbed.
fn standing_picks(sel: &ServiceSelector, st: &mut SelectorState, n: usize) -> Vec<usize> {
    let t = fixed_tuple(0);
    let mut kept = Vec::new();
    for i in 0..n * 3 / 2 {
        let ep = st.pick(sel, &t, all_live, 0, 0).unwrap();
        if i % 3 == 2 {
            st.unpick(sel, ep, all_live);
        } else {
            kept.push(ep);
        }
    }
    kept.truncate(n);
    kept
}

#[test]
fn a_pick_taken_back_leaves_round_robin_and_weighted_sequences_as_without_it() {
    for (alg, eps) in [
        (Algorithm::RoundRobin, endpoints(3)),
        (Algorithm::Weighted, weighted(&[3, 1, 2])),
    ] {
        let sel = selector(alg, &eps);
        let t = fixed_tuple(0);
        let mut undisturbed = SelectorState::new(&sel, 0);
        let expected: Vec<usize> = (0..12)
            .map(|_| undisturbed.pick(&sel, &t, all_live, 0, 0).unwrap())
            .collect();
        let mut st = SelectorState::new(&sel, 0);
        assert_eq!(standing_picks(&sel, &mut st, 12), expected, "{alg:?}");
        let shared = std::sync::Arc::new(SharedSelection::default());
        let mut st = SelectorState::with_shared(&sel, 0, shared);
        assert_eq!(
            standing_picks(&sel, &mut st, 12),
            expected,
            "{alg:?} shared"
        );
    }
}

#[test]
fn weights_80_and_20_split_100_new_flows_exactly_80_and_20() {
    let sel = selector(Algorithm::Weighted, &weighted(&[80, 20]));
    let mut st = SelectorState::new(&sel, 0);
    assert_eq!(spread(&sel, &mut st, 100), [80, 20]);
}

#[test]
fn any_window_of_sum_of_weights_weighted_picks_splits_exactly_by_weight() {
    let weights = [5u8, 1, 3, 0, 7];
    let sel = selector(Algorithm::Weighted, &weighted(&weights));
    let mut st = SelectorState::new(&sel, 0);
    let t = fixed_tuple(0);
    let total: usize = weights.iter().map(|&w| usize::from(w)).sum();
    let picks: Vec<usize> = (0..total * 4)
        .map(|_| st.pick(&sel, &t, all_live, 0, 0).unwrap())
        .collect();
    for window in picks.windows(total) {
        let mut counts = [0u8; 5];
        for &ep in window {
            counts[ep] += 1;
        }
        assert_eq!(counts, weights);
    }
    // Smooth: the heavy endpoint's picks are interleaved, not a burst of seven.
    assert!(picks.windows(4).all(|w| w.iter().any(|&ep| ep != 4)));
}

#[test]
fn weight_zero_endpoints_are_never_chosen_by_weighted_hash_or_persist() {
    let eps = weighted(&[0, 3, 0, 1]);
    for alg in [Algorithm::Weighted, Algorithm::Hash, Algorithm::Persist] {
        let sel = selector(alg, &eps);
        let mut st = SelectorState::new(&sel, 1024);
        let counts = spread(&sel, &mut st, 2000);
        assert_eq!((counts[0], counts[2]), (0, 0), "{alg:?}: {counts:?}");
        // Only weight-0 endpoints live: nothing may be chosen.
        let only_drained = |ep: usize| ep == 0 || ep == 2;
        assert_eq!(
            st.pick(&sel, &fixed_tuple(1), only_drained, 0, PERSIST_MS),
            None,
            "{alg:?}"
        );
    }
}

#[test]
fn all_zero_weights_count_as_equal_weights() {
    let sel = selector(Algorithm::Weighted, &weighted(&[0, 0, 0]));
    let mut st = SelectorState::new(&sel, 0);
    assert_eq!(spread(&sel, &mut st, 30), [10, 10, 10]);
    let sel = selector(Algorithm::Hash, &weighted(&[0, 0, 0]));
    assert!(sel.table().iter().all(|&i| i < 3));
}

#[test]
fn round_robin_and_least_connections_ignore_weights() {
    for alg in [Algorithm::RoundRobin, Algorithm::LeastConnections] {
        let sel = selector(alg, &weighted(&[80, 0, 20]));
        let mut st = SelectorState::new(&sel, 0);
        assert_eq!(spread(&sel, &mut st, 30), [10, 10, 10], "{alg:?}");
    }
}

#[test]
fn least_connections_picks_the_endpoint_with_fewest_active_flows() {
    let sel = selector(Algorithm::LeastConnections, &endpoints(3));
    let mut st = SelectorState::new(&sel, 0);
    let t = fixed_tuple(0);
    for _ in 0..3 {
        st.on_flow_open(&sel, 0);
    }
    st.on_flow_open(&sel, 2);
    assert_eq!(st.pick(&sel, &t, all_live, 0, 0), Some(1));
    st.on_flow_open(&sel, 1);
    st.on_flow_open(&sel, 1);
    assert_eq!(st.pick(&sel, &t, all_live, 0, 0), Some(2));
    assert_eq!(st.pick(&sel, &t, |ep| ep != 2, 0, 0), Some(1));
    for _ in 0..3 {
        st.on_flow_close(&sel, 0);
    }
    assert_eq!(st.active_flows(0), 0);
    assert_eq!(st.pick(&sel, &t, all_live, 0, 0), Some(0));
    // Closing more flows than were opened does not wrap.
    st.on_flow_close(&sel, 0);
    assert_eq!(st.active_flows(0), 0);
}

#[test]
fn workers_sharing_a_selection_rotate_as_one_skipping_a_down_endpoint() {
    let sel = selector(Algorithm::RoundRobin, &endpoints(3));
    let shared = std::sync::Arc::new(SharedSelection::default());
    let mut workers = [
        SelectorState::with_shared(&sel, 0, shared.clone()),
        SelectorState::with_shared(&sel, 0, shared),
    ];
    let t = fixed_tuple(0);
    // Picks alternate irregularly between the two workers, as RSS spreads connections.
    let order = [0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1];
    let picks: Vec<usize> = order
        .iter()
        .map(|&w| workers[w].pick(&sel, &t, all_live, 0, 0).unwrap())
        .collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
    let picks: Vec<usize> = order
        .iter()
        .map(|&w| workers[w].pick(&sel, &t, |ep| ep != 1, 0, 0).unwrap())
        .collect();
    assert_eq!(picks, [0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2]);
}

#[test]
fn workers_sharing_a_selection_count_each_others_flows_for_least_connections() {
    let sel = selector(Algorithm::LeastConnections, &endpoints(3));
    let shared = std::sync::Arc::new(SharedSelection::default());
    let mut a = SelectorState::with_shared(&sel, 0, shared.clone());
    let mut b = SelectorState::with_shared(&sel, 0, shared);
    let t = fixed_tuple(0);
    // Three long connections opened on worker a, one on b: b must avoid a's endpoints.
    for _ in 0..3 {
        let ep = a.pick(&sel, &t, all_live, 0, 0).unwrap();
        a.on_flow_open(&sel, ep);
    }
    // Every endpoint has one flow now; b's next two go to different endpoints.
    let first = b.pick(&sel, &t, all_live, 0, 0).unwrap();
    b.on_flow_open(&sel, first);
    let second = b.pick(&sel, &t, all_live, 0, 0).unwrap();
    assert_ne!(first, second);
    // A flow a opened and b closes (the count is the service's, not a worker's).
    b.on_flow_close(&sel, first);
    b.on_flow_close(&sel, first);
    assert_eq!(a.pick(&sel, &t, all_live, 0, 0), Some(first));
}

#[test]
fn least_connections_spreads_equal_loads_by_rotation() {
    let sel = selector(Algorithm::LeastConnections, &endpoints(4));
    let mut st = SelectorState::new(&sel, 0);
    let t = fixed_tuple(0);
    let picks: Vec<usize> = (0..8)
        .map(|_| st.pick(&sel, &t, all_live, 0, 0).unwrap())
        .collect();
    assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
    // Opening each picked flow keeps loads equal after every round, and still rotates.
    let picks: Vec<usize> = (0..8)
        .map(|_| {
            let ep = st.pick(&sel, &t, all_live, 0, 0).unwrap();
            st.on_flow_open(&sel, ep);
            ep
        })
        .collect();
    assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
}

#[test]
fn active_flow_counts_follow_their_endpoint_when_the_list_changes() {
    let old = selector(Algorithm::LeastConnections, &endpoints(3));
    let mut st = SelectorState::new(&old, 0);
    st.on_flow_open(&old, 1);
    st.on_flow_open(&old, 1);
    st.on_flow_open(&old, 2);
    // 10.0.0.1 removed, 10.0.0.9 added in front: indices shift.
    let new = selector(
        Algorithm::LeastConnections,
        &[endpoint(9, 1), endpoint(3, 1), endpoint(2, 1)],
    );
    assert_eq!(st.pick(&new, &fixed_tuple(0), all_live, 0, 0), Some(0));
    assert_eq!(
        (st.active_flows(0), st.active_flows(1), st.active_flows(2)),
        (0, 1, 2)
    );
    // A flow opened to 10.0.0.2 before the change closes against the new list.
    let ep = new.index_of(&endpoint(2, 1).key).unwrap();
    st.on_flow_close(&new, ep);
    assert_eq!(st.active_flows(2), 1);
    assert_eq!(new.index_of(&endpoint(1, 1).key), None);
}

// --- Persistence.

#[test]
fn a_persisting_client_sticks_to_its_endpoint_until_the_timeout() {
    let sel = selector(Algorithm::Persist, &endpoints(5));
    let mut st = SelectorState::new(&sel, 64);
    let first = st.pick(&sel, &client_tuple(7, 1000), all_live, 0, PERSIST_MS);
    let first = first.unwrap();
    for (port, now) in [(1001, 10_000), (1002, 50_000), (1003, 100_000)] {
        assert_eq!(
            st.pick(&sel, &client_tuple(7, port), all_live, now, PERSIST_MS),
            Some(first)
        );
    }
    assert_eq!(st.persisted_clients(100_000), 1);
    // Each new flow renewed the timeout; past it the client is forgotten.
    assert_eq!(st.persisted_clients(160_000), 0);
}

/// A client whose hashed endpoint differs between two selectors.
fn client_moved_by(a: &ServiceSelector, b: &ServiceSelector) -> u32 {
    (0..1000)
        .find(|&c| {
            let t = client_tuple(c, 1);
            let mut sa = SelectorState::new(a, 0);
            let mut sb = SelectorState::new(b, 0);
            let ka = a.endpoint(sa.pick(a, &t, all_live, 0, 0).unwrap());
            let kb = b.endpoint(sb.pick(b, &t, all_live, 0, 0).unwrap());
            ka != kb
        })
        .expect("some client moves")
}

#[test]
fn a_persisting_client_keeps_its_endpoint_when_endpoints_are_added() {
    let old = selector(Algorithm::Persist, &endpoints(4));
    let new = selector(Algorithm::Persist, &endpoints(8));
    let client = client_moved_by(&old, &new);
    let mut st = SelectorState::new(&old, 64);
    let kept = old.endpoint(
        st.pick(&old, &client_tuple(client, 1), all_live, 0, PERSIST_MS)
            .unwrap(),
    );
    let ep = st.pick(&new, &client_tuple(client, 2), all_live, 1000, PERSIST_MS);
    assert_eq!(new.endpoint(ep.unwrap()), kept);
    // Once forgotten, the client goes where the new list hashes it.
    let later = 1000 + PERSIST_MS + 1;
    let ep = st.pick(&new, &client_tuple(client, 3), all_live, later, PERSIST_MS);
    assert_ne!(new.endpoint(ep.unwrap()), kept);
}

#[test]
fn a_persisting_client_whose_endpoint_goes_down_is_moved_and_stays_moved() {
    let sel = selector(Algorithm::Persist, &endpoints(5));
    let mut st = SelectorState::new(&sel, 64);
    let first = st
        .pick(&sel, &client_tuple(3, 1), all_live, 0, PERSIST_MS)
        .unwrap();
    let second = st
        .pick(&sel, &client_tuple(3, 2), |ep| ep != first, 10, PERSIST_MS)
        .unwrap();
    assert_ne!(second, first);
    // The first endpoint is back, but the client now belongs to the second.
    assert_eq!(
        st.pick(&sel, &client_tuple(3, 3), all_live, 20, PERSIST_MS),
        Some(second)
    );
}

#[test]
fn a_full_persistence_cache_falls_back_to_the_client_hash_and_reuses_expired_entries() {
    let sel = selector(Algorithm::Persist, &endpoints(5));
    // One bucket: the capacity is a whole number of buckets.
    let mut st = SelectorState::new(&sel, PERSIST_WAYS);
    let stateless = |c: u32| {
        let mut none = SelectorState::new(&sel, 0);
        none.pick(&sel, &client_tuple(c, 1), all_live, 0, 0)
            .unwrap()
    };
    let clients = PERSIST_WAYS as u32 * 3;
    for c in 0..clients {
        assert_eq!(
            st.pick(&sel, &client_tuple(c, 1), all_live, 0, PERSIST_MS),
            Some(stateless(c))
        );
    }
    assert_eq!(st.persisted_clients(0), PERSIST_WAYS);
    // After the timeout the entries are free again for new clients.
    let later = PERSIST_MS + 1;
    for c in clients..clients + PERSIST_WAYS as u32 {
        st.pick(&sel, &client_tuple(c, 1), all_live, later, PERSIST_MS);
    }
    assert_eq!(st.persisted_clients(later), PERSIST_WAYS);
}

// --- Liveness and robustness, for every algorithm.

#[test]
fn no_live_endpoint_or_no_endpoint_gives_no_pick_for_every_algorithm() {
    for alg in ALL {
        let sel = selector(alg, &endpoints(4));
        let mut st = SelectorState::new(&sel, 16);
        assert_eq!(
            st.pick(&sel, &fixed_tuple(0), |_| false, 0, PERSIST_MS),
            None
        );
        let empty = selector(alg, &[]);
        let mut st = SelectorState::new(&empty, 16);
        assert_eq!(
            st.pick(&empty, &fixed_tuple(0), all_live, 0, PERSIST_MS),
            None
        );
        st.on_flow_open(&empty, 0);
        st.on_flow_close(&empty, 3);
    }
}

#[test]
fn random_endpoint_sets_and_liveness_never_yield_a_down_or_out_of_range_endpoint() {
    let mut rng = Rng(0x5eed);
    for round in 0..400 {
        let alg = ALL[round % ALL.len()];
        let n = rng.below(12) as u8;
        let eps: Vec<WeightedEndpoint> = (0..n)
            .map(|i| WeightedEndpoint {
                key: EndpointKey::v4(
                    Ipv4Addr::from(0x0a00_0000 + rng.below(64) as u32 * 256 + u32::from(i)),
                    rng.below(4) as u16 + 80,
                ),
                weight: [0, 1, 2, 7, 100, 255][rng.below(6) as usize],
            })
            .collect();
        let sel = ServiceSelector::new(alg, &eps, 211).unwrap();
        // A state left from another endpoint list, as after a publication.
        let stale = ServiceSelector::new(alg, &endpoints(rng.below(6) as u8), 211).unwrap();
        let mut st = SelectorState::new(&stale, rng.below(40) as usize);
        for _ in 0..rng.below(5) {
            st.on_flow_open(&stale, rng.below(8) as usize);
        }
        for step in 0..50u64 {
            let mask = rng.next();
            let live = |ep: usize| mask >> (ep % 64) & 1 == 1;
            let t = client_tuple(rng.below(20) as u32, rng.below(65536) as u16);
            let pick = st.pick(&sel, &t, live, step * 1000, rng.below(3) * 2000);
            let choosable: Vec<usize> = (0..eps.len())
                .filter(|&i| {
                    let weighted = matches!(
                        alg,
                        Algorithm::Hash | Algorithm::Weighted | Algorithm::Persist
                    );
                    let all_zero = eps.iter().all(|e| e.weight == 0);
                    live(i) && (!weighted || all_zero || eps[i].weight > 0)
                })
                .collect();
            match pick {
                Some(ep) => {
                    assert!(choosable.contains(&ep), "{alg:?} chose {ep} of {eps:?}");
                    if rng.below(2) == 0 {
                        st.on_flow_open(&sel, ep);
                    } else {
                        st.on_flow_close(&sel, ep);
                    }
                }
                None => assert!(choosable.is_empty(), "{alg:?} chose none of {choosable:?}"),
            }
        }
    }
}

#[test]
fn selectors_reject_bad_tables_and_duplicate_endpoints() {
    let eps = endpoints(3);
    assert_eq!(
        ServiceSelector::new(Algorithm::Hash, &eps, 65_536).unwrap_err(),
        SelectorError::TableSizeNotPrime(65_536)
    );
    assert_eq!(
        ServiceSelector::new(Algorithm::Persist, &eps, 2).unwrap_err(),
        SelectorError::TableTooSmall {
            size: 2,
            endpoints: 3
        }
    );
    // Algorithms without a table do not care about its size.
    assert!(ServiceSelector::new(Algorithm::RoundRobin, &eps, 0).is_ok());
    let dup = [endpoint(1, 1), endpoint(2, 1), endpoint(1, 5)];
    assert_eq!(
        ServiceSelector::new(Algorithm::Weighted, &dup, 13).unwrap_err(),
        SelectorError::DuplicateEndpoint { index: 2 }
    );
    let many: Vec<WeightedEndpoint> = (0..=MAX_ENDPOINTS as u32)
        .map(|i| WeightedEndpoint {
            key: EndpointKey::v4(Ipv4Addr::from(i), 80),
            weight: 1,
        })
        .collect();
    assert_eq!(
        ServiceSelector::new(Algorithm::RoundRobin, &many, 13).unwrap_err(),
        SelectorError::TooManyEndpoints(MAX_ENDPOINTS + 1)
    );
}

#[test]
fn loxilb_sel_numbers_map_to_algorithms() {
    let mapped: Vec<Option<Algorithm>> = (0..6).map(Algorithm::from_loxilb_sel).collect();
    assert_eq!(mapped[..5], ALL.map(Some));
    assert_eq!(mapped[5], None);
}
