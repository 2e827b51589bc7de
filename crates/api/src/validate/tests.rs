use super::*;
use crate::parse::tests::hello_service;
use crate::service::{ContainerPort, EnvVar, HttpGetAction, TrafficTarget};

fn check(svc: &Service) -> Vec<String> {
    match validate_service(svc, &FleetConfig::new()) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_demo_service_is_valid() {
    assert_eq!(check(&hello_service()), Vec::<String>::new());
}

#[test]
fn container_rules() {
    let mut svc = hello_service();
    let c = &mut svc.spec.template.spec.containers[0];
    c.image = String::new();
    c.ports.push(ContainerPort { name: Some("grpc".into()), container_port: 8013, protocol: None });
    c.env.push(EnvVar { name: "PORT".into(), value: Some("1".into()), value_from: None });
    c.env.push(EnvVar { name: "TARGET".into(), value: Some("x".into()), value_from: None });
    let e = check(&svc);
    assert!(e.contains(&"spec.template.spec.containers[0].image: required".to_string()), "{e:?}");
    assert!(
        e.contains(
            &"spec.template.spec.containers[0].ports: 2 ports given: at most one port may be declared"
                .to_string()
        ),
        "{e:?}"
    );
    assert!(
        e.iter().any(|x| x.starts_with("spec.template.spec.containers[0].env[1].name: \"PORT\" is reserved")),
        "{e:?}"
    );
    assert!(
        e.contains(&"spec.template.spec.containers[0].env[2].name: \"TARGET\" is set twice".to_string()),
        "{e:?}"
    );

    let mut svc = hello_service();
    svc.spec.template.spec.containers[0].ports[0].container_port = 9090;
    assert!(check(&svc)[0].contains("9090 is reserved by the queue proxy"));
    let mut svc = hello_service();
    svc.spec.template.spec.containers.push(svc.spec.template.spec.containers[0].clone());
    assert_eq!(
        check(&svc),
        [
            "spec.template.spec.containers: 2 containers given: ikukantai runs exactly one container per revision"
        ]
    );
    svc.spec.template.spec.containers.clear();
    assert_eq!(check(&svc), ["spec.template.spec.containers: exactly one container is required"]);
}

#[test]
fn resources_must_be_quantities() {
    for good in ["500m", "640M", "1Gi", "2", "0.5", "1e3", "+1"] {
        assert!(quantity(good).is_ok(), "{good}");
    }
    for bad in ["lots", "1GB", "", "1.2.3", "m"] {
        assert!(quantity(bad).is_err(), "{bad}");
    }
    let mut svc = hello_service();
    let r = svc.spec.template.spec.containers[0].resources.as_mut().unwrap();
    r.limits.insert("memory".into(), serde_json::json!("640MB"));
    assert_eq!(
        check(&svc),
        [
            "spec.template.spec.containers[0].resources.limits.memory: \"640MB\" is not a quantity (like \"500m\", \"640M\", \"1Gi\")"
        ]
    );
}

#[test]
fn probe_rules() {
    let mut svc = hello_service();
    let c = &mut svc.spec.template.spec.containers[0];
    c.readiness_probe = Some(crate::service::Probe {
        http_get: Some(HttpGetAction {
            path: Some("healthz".into()),
            port: Some(serde_json::json!(9000)),
            ..Default::default()
        }),
        exec: Some(serde_json::json!({"command": ["true"]})),
        timeout_seconds: Some(0),
        ..Default::default()
    });
    let e = check(&svc);
    let p = "spec.template.spec.containers[0].readinessProbe";
    assert!(
        e.contains(&format!(
            "{p}.exec: exec probes are not supported by ikukantai; use httpGet or tcpSocket"
        )),
        "{e:?}"
    );
    assert!(e.contains(&format!("{p}: set exactly one of httpGet, tcpSocket")), "{e:?}");
    assert!(
        e.contains(&format!("{p}.httpGet.port: 9000 must be the container port (8080) or omitted")),
        "{e:?}"
    );
    assert!(e.contains(&format!("{p}.httpGet.path: \"healthz\" must start with '/'")), "{e:?}");
    assert!(e.contains(&format!("{p}.timeoutSeconds: must be at least 1")), "{e:?}");
}

#[test]
fn timeouts_and_concurrency_ranges() {
    let mut svc = hello_service();
    let s = &mut svc.spec.template.spec;
    s.container_concurrency = Some(1001);
    s.timeout_seconds = Some(601);
    s.response_start_timeout_seconds = Some(700);
    s.idle_timeout_seconds = Some(601);
    let e = check(&svc);
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].starts_with("spec.template.spec.containerConcurrency: 1001 out of range"));
    assert!(
        e[1].starts_with("spec.template.spec.timeoutSeconds: 601 out of range: must be between 1 and 600")
    );
}

#[test]
fn traffic_rules() {
    let mut svc = hello_service();
    let target =
        |rev: Option<&str>, latest: Option<bool>, percent: Option<u32>, tag: Option<&str>| TrafficTarget {
            revision_name: rev.map(Into::into),
            latest_revision: latest,
            percent,
            tag: tag.map(Into::into),
            ..Default::default()
        };
    svc.spec.traffic = vec![
        target(Some("hello-00001"), None, Some(80), Some("blue")),
        target(None, Some(true), Some(20), Some("green")),
    ];
    assert_eq!(check(&svc), Vec::<String>::new());
    svc.spec.traffic = vec![
        target(Some("hello-00001"), Some(true), Some(50), Some("blue")),
        target(None, None, Some(40), Some("blue")),
    ];
    let e = check(&svc);
    assert_eq!(
        e,
        [
            "spec.traffic[0]: set either revisionName or latestRevision: true, not both",
            "spec.traffic[1]: set revisionName or latestRevision: true",
            "spec.traffic[1].tag: \"blue\" is used twice",
            "spec.traffic: traffic percentages sum to 90, want 100",
        ]
    );
}

#[test]
fn service_level_rules() {
    let mut svc = hello_service();
    svc.api_version = "serving.knative.dev/v1beta1".into();
    svc.metadata.annotations.insert("autoscaling.knative.dev/min-scale".into(), "1".into());
    svc.spec.template.metadata.name = Some("other-1".into());
    let e = check(&svc);
    assert_eq!(
        e,
        [
            "apiVersion: \"serving.knative.dev/v1beta1\" is not supported; use serving.knative.dev/v1",
            "metadata.annotations[\"autoscaling.knative.dev/min-scale\"]: autoscaling annotations belong on the revision template: move it to spec.template.metadata.annotations",
            "spec.template.metadata.name: \"other-1\" must start with the service name: \"hello-…\"",
        ]
    );
}
