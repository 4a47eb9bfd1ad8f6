//! The OpenAPI document and the offline docs pages.

use sha2::Digest as _;

use crate::harness::shared;

/// ReDoc's bundle as vendored (server/assets/redoc/README.md says where it comes from).
const REDOC_SHA256: &str = "dcaf76612bc4a3fbcc923a8966dee2f6146a5f32e5ce1b6f02dd60cbbf89500b";

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_checked_in_document_is_the_served_one() {
    let r = shared().client().get("/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["openapi"], "3.1.0");
    let path = root().join("schemas/openapi.json");
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_secureclaw"))
            .args(["serve", "--print-openapi"])
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(&path, out.stdout).unwrap();
    }
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        on_disk == r.body,
        "schemas/openapi.json is stale: regenerate it with\n    cargo run -q -- serve --print-openapi > schemas/openapi.json\n(or UPDATE_SCHEMAS=1 cargo test --test server openapi::)"
    );
}

#[tokio::test]
async fn every_operation_documents_its_errors_as_problems() {
    let r = shared().client().get("/openapi.json").await;
    let doc = &r.body;
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
            for (status, res) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let problem = &res["content"]["application/problem+json"];
                    assert!(
                        problem.is_object(),
                        "{method} {path} {status} is not documented as application/problem+json"
                    );
                }
            }
        }
    }
}

/// Whether `text` points the browser at another host: any absolute URL in a `src`/`href`
/// attribute, an `@import` or a `url(...)`.
fn external_loads(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for pattern in [
        "src=\"http",
        "src='http",
        "href=\"http",
        "href='http",
        "@import \"http",
        "url(http",
        "url(\"http",
        "cdn.",
        "unpkg.com",
        "jsdelivr",
        "fonts.googleapis",
    ] {
        if text.contains(pattern) {
            found.push(pattern.to_string());
        }
    }
    found
}

async fn load(path: &str) -> (u16, String, String, String) {
    let api = shared().client();
    let res = api
        .request(reqwest::Method::GET, path)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let header = |h: &str| {
        res.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let ctype = header("content-type");
    let csp = header("content-security-policy");
    (status, ctype, csp, res.text().await.unwrap())
}

#[tokio::test]
async fn swagger_ui_loads_from_the_binary_only() {
    let (status, ctype, csp, html) = load("/docs/").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(!html.contains("https://"), "{html}");
    let mut assets = Vec::new();
    for part in html.split(['"', '\'']) {
        if part.starts_with("./") {
            assets.push(format!("/docs/{}", part.trim_start_matches("./")));
        }
    }
    assert!(
        assets.iter().any(|a| a.ends_with("swagger-ui-bundle.js")),
        "{assets:?}"
    );
    for asset in assets {
        let (status, _, _, text) = load(&asset).await;
        assert_eq!(status, 200, "{asset}");
        assert!(
            external_loads(&text).is_empty(),
            "{asset} loads from elsewhere: {:?}",
            external_loads(&text)
        );
    }
    let (_, _, _, init) = load("/docs/swagger-initializer.js").await;
    assert!(init.contains("/openapi.json"), "{init}");
    // The bundle's default validator would load a badge from validator.swagger.io.
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
}

#[tokio::test]
async fn redoc_loads_from_the_binary_only() {
    let (status, ctype, csp, html) = load("/redoc").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    assert!(html.contains("src=\"/redoc/redoc.standalone.js\""));
    assert!(html.contains("spec-url=\"/openapi.json\""));

    let (status, ctype, _, js) = load("/redoc/redoc.standalone.js").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/javascript"), "{ctype}");
    assert!(js.len() > 500_000, "the bundle is served whole");
    assert!(
        external_loads(&js).is_empty(),
        "the served bundle loads from elsewhere: {:?}",
        external_loads(&js)
    );

    let (status, _, _, license) = load("/redoc/LICENSE").await;
    assert_eq!(status, 200);
    assert!(license.contains("MIT"));
}

#[test]
fn the_vendored_redoc_bundle_is_the_pinned_one() {
    let assets = root().join("server/assets/redoc");
    let bundle = std::fs::read(assets.join("redoc.standalone.js")).unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&bundle)), REDOC_SHA256);
    let license = std::fs::read_to_string(assets.join("LICENSE")).unwrap();
    assert!(license.contains("The MIT License"));
}
