//! A broken `.proto` fails the build with file, line and cause; the builder's overrides reach
//! the generated code.

use std::path::{Path, PathBuf};

/// A fresh directory with `files` written in it, and an output directory.
fn setup(name: &str, files: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("qsocket-build-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let src = root.join("src");
    let out = root.join("out");
    std::fs::create_dir_all(&src).expect("src dir");
    std::fs::create_dir_all(&out).expect("out dir");
    for (f, text) in files {
        std::fs::write(src.join(f), text).expect("write");
    }
    (src, out)
}

fn idl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../idl")
}

fn compile(name: &str, text: &str) -> Result<PathBuf, String> {
    let (src, out) = setup(name, &[("svc.proto", text)]);
    qsocket_build::configure()
        .out_dir(&out)
        // qsocket/options.proto is built in: no include path for it.
        .compile(&[src.join("svc.proto")], std::slice::from_ref(&src))
        .map(|()| out)
        .map_err(|e| e.to_string())
}

const HEAD: &str = "syntax = \"proto3\";\npackage t;\nimport \"qsocket/options.proto\";\n";

#[test]
fn broken_protos_say_file_line_and_cause() {
    let cases = [
        // The missing `;` is found at the `}` on the next line.
        ("syntax", "message M {\n  string a = 1\n}\n", "svc.proto:6:", "expected"),
        (
            "unknown-type",
            "message M {\n  Nope a = 1;\n}\n",
            "svc.proto:5:",
            "Nope",
        ),
        (
            "unknown-option",
            "message M {}\nservice S {\n  rpc F(M) returns (M) {\n    option (qsocket.retry) = 2;\n  }\n}\n",
            "svc.proto:7:",
            "qsocket.retry",
        ),
        (
            "unknown-option-field",
            "message M {}\nservice S {\n  rpc F(M) returns (M) {\n    option (qsocket.method) = { strategie: \"failover\" };\n  }\n}\n",
            "svc.proto:7:",
            // protox does not name the field.
            "invalid value of type 'qsocket.MethodPolicy'",
        ),
        (
            "unknown-strategy",
            "message M {}\nservice S {\n  rpc F(M) returns (M) {\n    option (qsocket.method) = { strategy: \"fastest\" };\n  }\n}\n",
            "svc.proto:6:",
            "unknown strategy \"fastest\"",
        ),
        (
            "streaming",
            "message M {}\nservice S {\n  rpc Watch(M) returns (stream M);\n}\n",
            "svc.proto:6:",
            "rpc t.S.Watch streams",
        ),
        (
            "oneway-result",
            "message M {}\nservice S {\n  rpc F(M) returns (M) {\n    option (qsocket.method) = { oneway: true };\n  }\n}\n",
            "svc.proto:6:",
            "returns google.protobuf.Empty",
        ),
    ];
    for (name, body, place, cause) in cases {
        let text = format!("{HEAD}{body}");
        let err = compile(name, &text).expect_err(name);
        assert!(err.contains(place), "{name}: {err}");
        assert!(err.contains(cause), "{name}: {err}");
    }
}

#[test]
fn overrides_reach_the_generated_code() {
    let (src, out) = setup(
        "override",
        &[(
            "svc.proto",
            &format!(
                "{HEAD}message M {{}}\nservice S {{\n  rpc F(M) returns (M) {{\n    option (qsocket.method) = {{ strategy: \"failover\" retries: 1 }};\n  }}\n  rpc G(M) returns (M);\n}}\n"
            ),
        )],
    );
    qsocket_build::configure()
        .out_dir(&out)
        .policy(
            "t.S.F",
            qsocket_build::Policy {
                retries: Some(4),
                ..Default::default()
            },
        )
        .policy(
            "t.S",
            qsocket_build::Policy {
                idempotent: true,
                ..Default::default()
            },
        )
        .compile(&[src.join("svc.proto")], &[src.clone(), idl()])
        .expect("compiles");
    let code = std::fs::read_to_string(out.join("t.rs")).expect("t.rs");
    let code: String = code.split_whitespace().collect();
    let policies = code.split("pubmodpolicies").nth(1).unwrap_or_default();
    let f_policy = policies
        .split("pubconstF:")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default();
    assert!(
        f_policy.contains("Some(::qsocket::rpc::Policy::failover(4u32).idempotent()"),
        "the method's strategy, the override's retries, the service override's idempotent: {f_policy}"
    );
    assert!(policies.contains("pubconstG:"), "{code}");
    assert!(
        code.contains("implserde::Serialize"),
        "proto3 JSON appended: {code}"
    );
}
