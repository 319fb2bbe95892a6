//! What the ingress refuses, over real HTTP on port 0: bad or missing signatures (and which),
//! rotated secrets and both header names, unknown sources, the allowlist and trusted proxies,
//! bodies over the limit, wrong methods.

mod support;

use prost::Message;
use support::*;
use terra_core::envelope::Envelope;

#[tokio::test]
async fn signature_failures_say_which() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    let body = fixture("activity");
    let now = unix_now();
    type Case<'a> = (Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], 400, "missing_signature"),
        (
            vec![("terra-signature", "v1=abcd".into())],
            400,
            "no_timestamp",
        ),
        (
            vec![("terra-signature", "t=soon,v1=abcd".into())],
            400,
            "bad_timestamp",
        ),
        (
            vec![("terra-signature", sign(SECRET, &body).replace("v1=", "v0="))],
            400,
            "no_v1_signature",
        ),
        (
            vec![("terra-signature", sign("whsec_wrong", &body))],
            401,
            "signature_mismatch",
        ),
        (
            vec![("terra-signature", sign_at(SECRET, &body, now - 301))],
            401,
            "timestamp_outside_tolerance",
        ),
        (
            vec![("terra-signature", sign_at(SECRET, &body, now + 400))],
            401,
            "timestamp_outside_tolerance",
        ),
    ];
    for (headers, status, code) in cases {
        let response = app.post("/webhook", &body, &headers).await;
        assert_eq!(response.status(), status, "{code}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["error"], code);
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .contains("terra-signature"),
            "{json}"
        );
    }
    // a tampered body with a valid header for the original
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let response = app
        .post(
            "/webhook",
            &tampered,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
    assert_eq!(response.status(), 401);
    app.assert_log_empty().await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"terra_ingest_webhook_requests_total{source="default",outcome="signature_mismatch"} 2"#), "{metrics}");
}

#[tokio::test]
async fn rotated_secrets_and_both_header_names_verify() {
    let app = spawn(config(vec![source("default", &["whsec_new", "whsec_old"])])).await;
    let body = fixture("daily");
    // signed at distinct times: the same t and body would be one delivery (the replay cache);
    // counted from one start, since `unix_now() - i` repeats a time when a second passes
    let start = unix_now();
    for (i, (name, secret)) in [
        ("terra-signature", "whsec_old"),
        ("X-Terra-Signature", "whsec_new"),
        ("Terra-Signature", "whsec_new"),
    ]
    .into_iter()
    .enumerate()
    {
        let t = start - i as i64;
        let response = app
            .post("/webhook", &body, &[(name, sign_at(secret, &body, t))])
            .await;
        assert_eq!(response.status(), 200, "{name} {secret}");
    }
    app.read_log(3).await;
}

#[tokio::test]
async fn named_sources_have_their_own_secrets_and_unknown_ones_are_404() {
    let app = spawn(config(vec![
        source("default", &[SECRET]),
        source("prod-eu", &["whsec_prod"]),
    ]))
    .await;
    let body = fixture("body");
    assert_eq!(
        app.post(
            "/webhooks/prod-eu",
            &body,
            &[("terra-signature", sign("whsec_prod", &body))]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.post(
            "/webhooks/prod-eu",
            &body,
            &[("terra-signature", sign(SECRET, &body))]
        )
        .await
        .status(),
        401
    );
    let response = app
        .post(
            "/webhooks/staging",
            &body,
            &[("terra-signature", sign(SECRET, &body))],
        )
        .await;
    assert_eq!(response.status(), 404);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "unknown_source");
    let envelope = Envelope::decode(app.read_log(1).await[0].value.clone()).unwrap();
    assert_eq!(envelope.source, "prod-eu");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"source="unknown",outcome="unknown_source""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn allowlist_and_trusted_proxies() {
    let mut terra_only = source("default", &[SECRET]);
    terra_only.allowlist = Some(terra_ingress::AllowEntry::TerraPreset.networks());
    let mut behind_proxy = source("proxied", &[SECRET]);
    behind_proxy.allowlist = Some(
        terra_ingress::AllowEntry::parse("terra")
            .unwrap()
            .networks(),
    );
    behind_proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let app = spawn(config(vec![terra_only, behind_proxy])).await;
    let body = fixture("auth");
    let signed = sign(SECRET, &body);

    // loopback is not Terra, and X-Forwarded-For from an untrusted peer is ignored
    let response = app
        .post(
            "/webhook",
            &body,
            &[
                ("terra-signature", signed.clone()),
                ("x-forwarded-for", "18.133.218.210".into()),
            ],
        )
        .await;
    assert_eq!(response.status(), 403);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "forbidden");
    assert!(json["message"].as_str().unwrap().contains("127.0.0.1"));

    // through a trusted proxy, the forwarded Terra address counts, and is what gets stored
    let ok = app
        .post(
            "/webhooks/proxied",
            &body,
            &[
                ("terra-signature", signed.clone()),
                ("x-forwarded-for", "6.6.6.6, 18.133.218.210".into()),
            ],
        )
        .await;
    assert_eq!(ok.status(), 200);
    let not_terra = app
        .post(
            "/webhooks/proxied",
            &body,
            &[
                ("terra-signature", signed.clone()),
                ("x-forwarded-for", "18.133.218.210, 6.6.6.6".into()),
            ],
        )
        .await;
    assert_eq!(not_terra.status(), 403);
    let garbage = app
        .post(
            "/webhooks/proxied",
            &body,
            &[
                ("terra-signature", signed),
                ("x-forwarded-for", "nonsense".into()),
            ],
        )
        .await;
    assert_eq!(garbage.status(), 403);
    let envelope = Envelope::decode(app.read_log(1).await[0].value.clone()).unwrap();
    assert_eq!(envelope.remote_addr, "18.133.218.210");
    app.assert_log_empty().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_streamed() {
    let mut cfg = config(vec![source("default", &[SECRET])]);
    cfg.body_limit = 1024;
    let app = spawn(cfg).await;
    let big = vec![b'x'; 2048];
    let response = app
        .post("/webhook", &big, &[("terra-signature", sign(SECRET, &big))])
        .await;
    assert_eq!(response.status(), 413);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "too_large");
    assert!(json["message"].as_str().unwrap().contains("1024"));
    // chunked, with no Content-Length to refuse early on
    let chunked = app.raw(&format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\nterra-signature: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        sign(SECRET, &big), "x".repeat(2048)
    )).await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    // exactly at the limit is fine
    let fits = vec![b' '; 1024];
    assert_eq!(
        app.post(
            "/webhook",
            &fits,
            &[("terra-signature", sign(SECRET, &fits))]
        )
        .await
        .status(),
        200
    );
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let app = spawn(config(vec![source("default", &[SECRET])])).await;
    for path in ["/webhook", "/webhooks/default"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(response.headers()["allow"], "POST");
    }
    assert_eq!(
        app.client
            .post(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(app.get("/nowhere").await.status(), 404);
}
