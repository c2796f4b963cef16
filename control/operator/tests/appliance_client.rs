//! The appliance client against the fake appliance: `--appendEPs` attaches and detaches
//! endpoints and still converges, and the bearer token reaches every call. Needs no root.

mod support;

use oxlb_api::{Endpoint, LoadBalancerEntry};
use oxlb_operator::appliance::{Appliance, Credentials, EndpointUpdates, SyncReport};
use serde_json::json;
use support::appliance::FakeAppliance;

const PREFIX: &str = "shop_web:";

fn rule(eps: &[&str]) -> LoadBalancerEntry {
    let endpoints: Vec<Endpoint> = eps
        .iter()
        .map(|ip| Endpoint {
            endpoint_ip: (*ip).to_owned(),
            target_port: 8080,
            weight: 1,
            state: None,
            counter: None,
        })
        .collect();
    let mut e: LoadBalancerEntry = serde_json::from_value(json!({
        "serviceArguments": {"externalIP": "198.18.100.1", "port": 80, "protocol": "tcp",
                             "name": "shop_web:llb-inst0", "inactiveTimeOut": 1800, "managed": true},
        "endpoints": [],
    }))
    .unwrap();
    e.endpoints = endpoints;
    e
}

fn eps_on(fake: &FakeAppliance) -> Vec<String> {
    let mut v: Vec<String> = fake
        .rules()
        .iter()
        .flat_map(|r| r.endpoints.iter().map(|p| p.endpoint_ip.clone()))
        .collect();
    v.sort();
    v
}

fn report(created: usize, deleted: usize, attached: usize, detached: usize) -> SyncReport {
    SyncReport {
        created,
        deleted,
        attached,
        detached,
    }
}

#[tokio::test]
async fn with_append_eps_endpoint_changes_are_attached_and_detached_without_replacing_the_rule() {
    let fake = FakeAppliance::default();
    let port = fake.start();
    let a = Appliance::new(
        &format!("http://127.0.0.1:{port}"),
        &Credentials::default(),
        EndpointUpdates::AttachDetach,
    )
    .unwrap();

    // A missing rule is created whole: oxlb refuses attaching to nothing.
    let r = a
        .sync(PREFIX, &[rule(&["10.1.0.1", "10.1.0.2"])])
        .await
        .unwrap();
    assert_eq!(r, report(1, 0, 0, 0));
    assert_eq!(
        fake.take_requests(),
        vec!["GET all", "POST 198.18.100.1:80/tcp 2"]
    );

    // Scale up: one attach carrying only the new endpoint.
    let r = a
        .sync(PREFIX, &[rule(&["10.1.0.1", "10.1.0.2", "10.1.0.3"])])
        .await
        .unwrap();
    assert_eq!(r, report(0, 0, 1, 0));
    assert_eq!(
        fake.take_requests(),
        vec!["GET all", "ATTACH 198.18.100.1:80/tcp 10.1.0.3:8080"]
    );

    // Scale down: one detach.
    let r = a.sync(PREFIX, &[rule(&["10.1.0.3"])]).await.unwrap();
    assert_eq!(r, report(0, 0, 0, 2));
    assert_eq!(
        fake.take_requests(),
        vec![
            "GET all",
            "DETACH 198.18.100.1:80/tcp 10.1.0.1:8080,10.1.0.2:8080"
        ]
    );
    assert_eq!(eps_on(&fake), vec!["10.1.0.3"]);

    // A complete change of endpoints attaches before it detaches, so the rule never passes
    // through an empty set (which the appliance refuses).
    let r = a.sync(PREFIX, &[rule(&["10.1.0.4"])]).await.unwrap();
    assert_eq!(r, report(0, 0, 1, 1));
    assert_eq!(
        fake.take_requests(),
        vec![
            "GET all",
            "ATTACH 198.18.100.1:80/tcp 10.1.0.4:8080",
            "DETACH 198.18.100.1:80/tcp 10.1.0.3:8080"
        ]
    );

    // In line already: a resync only lists.
    assert_eq!(
        a.sync(PREFIX, &[rule(&["10.1.0.4"])]).await.unwrap(),
        report(0, 0, 0, 0)
    );
    assert_eq!(fake.take_requests(), vec!["GET all"]);

    // Delete: the rule goes (detaching its last endpoint would be refused).
    assert_eq!(a.remove_all(PREFIX).await.unwrap(), 1);
    assert_eq!(
        fake.take_requests(),
        vec!["GET all", "DELETE 198.18.100.1:80/tcp"]
    );
    assert!(fake.rules().is_empty());
}

#[tokio::test]
async fn with_append_eps_a_resync_detaches_endpoints_the_cluster_does_not_have() {
    let fake = FakeAppliance::default();
    let port = fake.start();
    let a = Appliance::new(
        &format!("http://127.0.0.1:{port}"),
        &Credentials::default(),
        EndpointUpdates::AttachDetach,
    )
    .unwrap();
    let want = rule(&["10.1.0.1"]);
    a.sync(PREFIX, std::slice::from_ref(&want)).await.unwrap();
    // Behind the operator's back: an endpoint added and the weight of ours changed.
    {
        let mut rules = fake.rules.lock().unwrap();
        rules[0].endpoints[0].weight = 7;
        let mut stray = rules[0].endpoints[0].clone();
        stray.endpoint_ip = "10.9.9.9".into();
        rules[0].endpoints.push(stray);
    }
    fake.take_requests();
    let r = a.sync(PREFIX, std::slice::from_ref(&want)).await.unwrap();
    assert_eq!(r, report(0, 0, 1, 1));
    assert_eq!(
        fake.take_requests(),
        vec![
            "GET all",
            "ATTACH 198.18.100.1:80/tcp 10.1.0.1:8080",
            "DETACH 198.18.100.1:80/tcp 10.9.9.9:8080"
        ]
    );
    assert_eq!(fake.rules()[0].endpoints, want.endpoints);

    // A setting an attach cannot change (here the selection) is fixed by posting the rule whole.
    let mut other = want.clone();
    other.service_arguments.sel = 1;
    let r = a.sync(PREFIX, std::slice::from_ref(&other)).await.unwrap();
    assert_eq!(r, report(1, 0, 0, 0));
    assert_eq!(fake.rules()[0].service_arguments.sel, 1);
}

#[tokio::test]
async fn without_append_eps_an_endpoint_change_posts_the_rule_whole() {
    let fake = FakeAppliance::default();
    let port = fake.start();
    let a = Appliance::new(
        &format!("http://127.0.0.1:{port}"),
        &Credentials::default(),
        EndpointUpdates::Replace,
    )
    .unwrap();
    a.sync(PREFIX, &[rule(&["10.1.0.1"])]).await.unwrap();
    fake.take_requests();
    let r = a
        .sync(PREFIX, &[rule(&["10.1.0.1", "10.1.0.2"])])
        .await
        .unwrap();
    assert_eq!(r, report(1, 0, 0, 0));
    assert_eq!(
        fake.take_requests(),
        vec!["GET all", "POST 198.18.100.1:80/tcp 2"]
    );
}

#[tokio::test]
async fn an_appliance_requiring_a_token_gets_it_on_every_call_and_refuses_calls_without() {
    let fake = FakeAppliance::default();
    fake.require_token("s3cret-token-for-tests");
    let port = fake.start();
    let url = format!("http://127.0.0.1:{port}");

    let without = Appliance::new(&url, &Credentials::default(), EndpointUpdates::Replace).unwrap();
    let e = without.list().await.unwrap_err();
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    assert!(without.probe().await.is_err());
    assert_eq!(fake.refused_auth(), 2);

    let dir = std::env::temp_dir().join(format!("oxlb-op-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "s3cret-token-for-tests\n").unwrap();
    let creds = Credentials::from_file(file.to_str().unwrap()).unwrap();
    let with = Appliance::new(&url, &creds, EndpointUpdates::AttachDetach).unwrap();
    with.probe().await.unwrap();
    with.sync(PREFIX, &[rule(&["10.1.0.1"])]).await.unwrap();
    with.sync(PREFIX, &[rule(&["10.1.0.2"])]).await.unwrap();
    with.remove_all(PREFIX).await.unwrap();
    assert_eq!(fake.refused_auth(), 2, "a call went out without the token");

    // kube-loxilb's per-appliance variable wins over the file, so a wrong one is refused.
    let var = oxlb_operator::appliance::access_token_variable(&format!("127.0.0.1:{port}"));
    assert_eq!(var, format!("ACCESS_TOKEN_127_0_0_1_{port}"));
    let env = |k: &str| (k == var).then(|| "not-the-token".to_owned());
    let wrong = Appliance::with_env(&url, &creds, EndpointUpdates::Replace, &env).unwrap();
    assert!(wrong.list().await.is_err());
    let env = |k: &str| (k == var).then(|| "s3cret-token-for-tests".to_owned());
    let right = Appliance::with_env(
        &url,
        &Credentials::default(),
        EndpointUpdates::Replace,
        &env,
    )
    .unwrap();
    right.list().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
