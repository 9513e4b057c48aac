//! `bertkit serve --grpc-port`: KServe v2 over gRPC against the real binary, with bertkit's
//! own gRPC client — the API key, the payload limit, request ids and timing metadata, what
//! is not served, a client that does not speak gRPC, the metrics shared with HTTP, and the
//! drain with a gRPC connection open. (tests/cli_serve.rs drives the same port with the
//! official tritonclient.grpc and compares its answers with HTTP's.)

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use bertkit_serve::grpc::client::Client;
use bertkit_serve::grpc::messages::*;
use bertkit_serve::grpc::Code;
use common::serve::{request, tiny_classifier_plan, Server};
use serde_json::{json, Value};

const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

fn texts_request(model: &str, texts: &[&str]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "TEXT".into(),
            datatype: "BYTES".into(),
            shape: vec![texts.len() as i64],
            parameters: HashMap::new(),
            contents: Some(InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "logits".into(),
            parameters: HashMap::new(),
        }],
        ..Default::default()
    }
}

fn floats(raw: &[u8]) -> Vec<f64> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect()
}

#[test]
fn grpc_calls_pass_the_same_key_limits_and_accounting_as_http() {
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_classifier_plan(dir.path());
    let args: Vec<String> = [
        "--plan",
        &format!("cls={}", plan.display()),
        "--grpc-port",
        "0",
        "--api-key",
        "k3y",
        "--payload-limit",
        "4000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = Server::start(&args);
    let grpc = server.grpc.clone().expect("no gRPC line");
    let texts = ["a quietly moving film", "two hours I will never get back"];
    let key = [("authorization", "Bearer k3y")];
    // The HTTP answer the gRPC one must equal.
    let want: Value = {
        let body = json!({"inputs": texts}).to_string();
        let r = request(
            &server.addr,
            "POST",
            "/predict",
            &[("content-type", "application/json"), key[0]],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };

    let rt = bertkit_serve::http_runtime().unwrap();
    rt.block_on(async {
        let mut c = Client::connect(&grpc).await.unwrap();

        // Health needs no key: the standard check and KServe's.
        let (r, _) = c
            .call::<_, HealthCheckResponse>(
                "/grpc.health.v1.Health/Check",
                &HealthCheckRequest::default(),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.unwrap().status, SERVING);
        // A model's health is its readiness, which needs the key.
        let model = |name: &str| HealthCheckRequest {
            service: name.into(),
        };
        let check = "/grpc.health.v1.Health/Check";
        let (r, _) = c
            .call::<_, HealthCheckResponse>(check, &model("cls"), &[])
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().code, Code::Unauthenticated);
        let (r, _) = c
            .call::<_, HealthCheckResponse>(check, &model("cls"), &key)
            .await
            .unwrap();
        assert_eq!(r.unwrap().status, SERVING);
        let (r, _) = c
            .call::<_, HealthCheckResponse>(check, &model("nope"), &key)
            .await
            .unwrap();
        assert_eq!(r.unwrap().status, SERVICE_UNKNOWN);
        let (r, _) = c
            .call::<_, ServerLiveResponse>(
                "/inference.GRPCInferenceService/ServerLive",
                &Empty {},
                &[],
            )
            .await
            .unwrap();
        assert!(r.unwrap().live);

        // Inference needs the key, as over HTTP.
        let q = texts_request("cls", &texts);
        let (r, _) = c
            .call::<_, ModelInferResponse>(INFER, &q, &[])
            .await
            .unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::Unauthenticated, "{e}");
        assert!(e.message.contains("API key"), "{e}");

        // With it: HTTP's logits, the client's request id echoed, TEI's timing as metadata.
        let meta = [key[0], ("x-request-id", "grpc-42")];
        let (r, headers) = c
            .call::<_, ModelInferResponse>(INFER, &q, &meta)
            .await
            .unwrap();
        let r = r.unwrap();
        assert_eq!(headers.get("x-request-id").unwrap(), "grpc-42");
        assert!(headers.contains_key("x-inference-time"), "{headers:?}");
        assert_eq!(
            (r.model_name.as_str(), r.model_version.as_str()),
            ("cls", "1")
        );
        assert_eq!(r.outputs.len(), 1);
        assert_eq!(r.outputs[0].shape, vec![2, 3]);
        let got = floats(&r.raw_output_contents[0]);
        for (i, row) in want.as_array().unwrap().iter().enumerate() {
            for (j, w) in row["logits"].as_array().unwrap().iter().enumerate() {
                assert!(
                    (got[i * 3 + j] - w.as_f64().unwrap()).abs() < 1e-6,
                    "{got:?} vs {want}"
                );
            }
        }

        // Bad calls: a status with a message; the connection keeps serving.
        let big = "word ".repeat(1000);
        let (r, _) = c
            .call::<_, ModelInferResponse>(INFER, &texts_request("cls", &[&big]), &key)
            .await
            .unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted, "{e}");
        assert!(e.message.contains("--payload-limit"), "{e}");
        let (r, _) = c
            .call::<_, ModelInferResponse>(INFER, &texts_request("nope", &texts), &key)
            .await
            .unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::NotFound, "{e}");
        assert!(e.message.contains("\"nope\""), "{e}");
        let mut no_input = texts_request("cls", &texts);
        no_input.inputs.clear();
        let (r, _) = c
            .call::<_, ModelInferResponse>(INFER, &no_input, &key)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().code, Code::InvalidArgument);
        let (r, _) = c
            .call::<_, Empty>("/inference.GRPCInferenceService/ModelStreamInfer", &q, &key)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().code, Code::Unimplemented);
        let (r, _) = c
            .call::<_, ModelInferResponse>(INFER, &q, &key)
            .await
            .unwrap();
        assert!(r.is_ok());
    });

    // HTTP/1 on the gRPC port gets no HTTP answer.
    let mut s = std::net::TcpStream::connect(&grpc).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // Counted with HTTP's requests, under the route they map onto (2 successes; no key,
    // unknown model, no input), or as `grpc` when refused before one (too large, a method
    // not served).
    let m = request(&server.addr, "GET", "/metrics", &key, b"").text();
    let route = "endpoint=\"/v2/models/{model}/infer\"";
    assert!(
        m.contains(&format!("bertkit_requests_success_total{{{route}}} 2")),
        "{m}"
    );
    for (endpoint, reason) in [
        (route, "unauthorized"),
        (route, "not_found"),
        (route, "invalid_request"),
        ("endpoint=\"grpc\"", "payload_too_large"),
        ("endpoint=\"grpc\"", "unimplemented"),
    ] {
        let line = format!("bertkit_requests_failure_total{{{endpoint},reason=\"{reason}\"}} 1");
        assert!(m.contains(&line), "{line}: {m}");
    }

    // SIGTERM with a gRPC connection open (idle): the server drains it and stops at once.
    let rt2 = bertkit_serve::http_runtime().unwrap();
    let _held = rt2.block_on(Client::connect(&grpc)).unwrap();
    server.terminate();
    server.exited_ok();
}
