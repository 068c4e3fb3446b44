//! Every way a client certificate can be wrong, tried against a real
//! control plane: what the server answers (asked by a raw gRPC client,
//! which skips `picketctl`'s own checks) and the one line `picketctl`
//! prints. docs/security.md has the same table.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use picket_tests::*;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
};
use tonic::Code;

/// How the server refused.
#[derive(Debug, PartialEq)]
enum Refused {
    /// The TLS handshake failed: the certificate never reached a service.
    Tls,
    Status(Code),
}

/// A client certificate for `cn`/`unit`, valid from `from` to `until`
/// (seconds from now), signed by the CA in `ca_dir`, or self-signed.
fn make_cert(
    out: &Path,
    cn: &str,
    unit: &str,
    from: i64,
    until: i64,
    ca_dir: Option<&Path>,
) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "picket");
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::seconds(from);
    p.not_after = now + time::Duration::seconds(until);
    let cert = match ca_dir {
        Some(dir) => {
            let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key"))?)?;
            let issuer =
                Issuer::from_ca_cert_pem(&std::fs::read_to_string(dir.join("ca.crt"))?, ca_key)?;
            p.signed_by(&key, &issuer)?
        }
        None => p.self_signed(&key)?,
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("c.crt"), cert.pem())?;
    std::fs::write(out.join("c.key"), key.serialize_pem())?;
    Ok(())
}

/// Calls the admin service's `ListAgents` (a viewer call) or
/// `CreateToken` (an admin call) as `cert`/`key`, with no checks of our own.
fn raw_call(
    cp: &Control,
    cert: Option<(&Path, &Path)>,
    admin_call: bool,
) -> Result<Option<Refused>> {
    use picket_proto::v1::admin_service_client::AdminServiceClient;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let ca = picket_tls::files::read_certs(&cp.data_dir.join("ca.crt"))?;
        let cfg = match cert {
            Some((c, k)) => picket_tls::client::mtls_config(
                &ca,
                picket_tls::files::read_certs(c)?,
                picket_tls::files::read_key(k)?,
            )?,
            None => {
                let fp = picket_tls::fingerprint::parse(&picket_tls::fingerprint::of_der(
                    ca[0].as_ref(),
                ))?;
                picket_tls::client::pinned_config(fp).0
            }
        };
        let Ok(ch) = picket_tls::client::connect(&cp.grpc, cfg).await else {
            return Ok(Some(Refused::Tls));
        };
        let mut c = AdminServiceClient::new(ch);
        let r = if admin_call {
            c.create_token(picket_proto::v1::CreateTokenRequest {
                ttl_seconds: 60,
                uses: 1,
                labels: Default::default(),
            })
            .await
            .map(|_| ())
        } else {
            c.list_agents(picket_proto::v1::ListAgentsRequest {})
                .await
                .map(|_| ())
        };
        Ok(match r {
            Ok(()) => None,
            // TLS 1.3: the client finishes its side of the handshake
            // before the server judges its certificate; the refusal then
            // arrives as the connection closing under the first call.
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ) && !s.message().contains("client certificate") =>
            {
                Some(Refused::Tls)
            }
            Err(s) => Some(Refused::Status(s.code())),
        })
    })
}

fn handshake_failures(cp: &Control) -> f64 {
    http_get(&cp.http, "/metrics")
        .ok()
        .and_then(|(_, body)| {
            body.lines()
                .find(|l| l.starts_with("picket_control_tls_handshake_failures "))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(-1.0)
}

#[test]
fn every_wrong_certificate_is_refused_with_its_status_and_one_line() -> Result<()> {
    let w = World::new()?;
    let fp = w.init("cp", "")?;
    w.init("other", "")?;
    let cp = Control::start(&w, "cp")?;
    let admin = cp.admin_flags();
    let cp_dir = w.path("cp");

    // The cast: a viewer, a revoked agent, an enrolled agent, and
    // certificates made by hand.
    let out = ctl(
        &w,
        &admin,
        &["user", "add", "vic", "--role", "viewer", "--out", "vic"],
    )?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    for name in ["gone", "live"] {
        let tok = token(&w, &cp, &[])?;
        let out = enroll(&w, &cp, &fp, &tok, name, &[])?;
        anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    }
    let out = ctl(&w, &admin, &["agents", "revoke", "gone"])?;
    anyhow::ensure!(out.status.success(), "{}", stderr(&out));
    make_cert(&w.path("selfsigned"), "admin", "user", -60, 3600, None)?;
    make_cert(
        &w.path("expired"),
        "admin",
        "user",
        -7200,
        -3600,
        Some(&cp_dir),
    )?;
    make_cert(
        &w.path("future"),
        "admin",
        "user",
        3600,
        7200,
        Some(&cp_dir),
    )?;

    let p = |s: &str| w.path(s);
    // (case, cert and key, an admin call?, the server's answer, what
    // picketctl's one line says)
    type Case<'a> = (
        &'a str,
        Option<(std::path::PathBuf, std::path::PathBuf)>,
        bool,
        Refused,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "no certificate",
            None,
            false,
            Refused::Status(Code::Unauthenticated),
            "",
        ),
        (
            "self-signed",
            Some((p("selfsigned/c.crt"), p("selfsigned/c.key"))),
            false,
            Refused::Tls,
            "was not issued by the CA",
        ),
        (
            "another CA",
            Some((p("other/admin.crt"), p("other/admin.key"))),
            false,
            Refused::Tls,
            "was not issued by the CA",
        ),
        (
            "expired",
            Some((p("expired/c.crt"), p("expired/c.key"))),
            false,
            Refused::Tls,
            "has expired",
        ),
        (
            "not yet valid",
            Some((p("future/c.crt"), p("future/c.key"))),
            false,
            Refused::Tls,
            "not valid yet",
        ),
        (
            "revoked agent",
            Some((p("agents/gone/agent.crt"), p("agents/gone/agent.key"))),
            false,
            Refused::Status(Code::Unauthenticated),
            "agent gone is revoked",
        ),
        (
            "agent on the admin service",
            Some((p("agents/live/agent.crt"), p("agents/live/agent.key"))),
            false,
            Refused::Status(Code::PermissionDenied),
            "may not call the admin service",
        ),
        (
            "viewer on an admin call",
            Some((p("vic/vic.crt"), p("vic/vic.key"))),
            true,
            Refused::Status(Code::PermissionDenied),
            "needs admin",
        ),
        (
            "server certificate as a client one",
            Some((p("cp/server.crt"), p("cp/server.key"))),
            false,
            Refused::Tls,
            "does not allow extended key usage for client authentication",
        ),
    ];
    let mut report = Vec::new();
    for (case, cert, admin_call, want, line) in &cases {
        let before = handshake_failures(&cp);
        let got = raw_call(
            &cp,
            cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            *admin_call,
        )
        .with_context(|| case.to_string())?;
        assert_eq!(got.as_ref(), Some(want), "{case}: the server's answer");
        if *want == Refused::Tls {
            wait_for(
                &format!("{case}: a counted handshake failure"),
                Duration::from_secs(5),
                || (handshake_failures(&cp) > before).then_some(()),
            )?;
        }
        // picketctl: one line, exit 1 (refused) or 2 (credentials it can
        // tell are wrong before dialling).
        let Some((c, k)) = cert else { continue };
        let mut flags = cp.admin_flags();
        flags[5] = c.display().to_string();
        flags[7] = k.display().to_string();
        let args: &[&str] = if *admin_call {
            &["token", "create"]
        } else {
            &["agents", "list"]
        };
        let out = ctl(&w, &flags, args)?;
        let e = stderr(&out);
        assert!(matches!(out.status.code(), Some(1 | 2)), "{case}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{case}: one line: {e}");
        assert!(e.contains(line), "{case}: {e}");
        report.push(format!(
            "{case}: {got:?}, picketctl exit {:?}: {}",
            out.status.code(),
            e.trim()
        ));
    }
    eprintln!("{}", report.join("\n"));
    Ok(())
}
