//! `picketctl user add NAME --role R` (the key is made here and never
//! sent), `picketctl user revoke NAME` and `picketctl user list`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use picket_proto::v1;
use picket_tls::{csr, files};
use serde_json::json;

use super::rpc;
use crate::args::{Format, UserCmd};
use crate::client::Admin;
use crate::output::json_line;

pub async fn run(
    admin: &mut Admin,
    cmd: UserCmd,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (name, role, dir, run_as, hosts) = match cmd {
        UserCmd::Add {
            name,
            role,
            out,
            run_as,
            hosts,
        } => (name, role, out, run_as, hosts),
        UserCmd::Revoke { name } => return revoke(admin, name, fmt, out).await,
        UserCmd::List => return list(admin, fmt, out).await,
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(format!("picket-{name}")));
    let key_path = dir.join(format!("{name}.key"));
    if key_path.exists() {
        bail!("{} exists; refusing to overwrite a key", key_path.display());
    }
    let kc = csr::new_key_and_csr(&name)?;
    let r = admin
        .add_user(v1::AddUserRequest {
            name: name.clone(),
            role: v1::Role::from(role) as i32,
            csr_pem: kc.csr_pem,
            run_as: run_as.clone(),
            hosts: hosts.clone().unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert_path = dir.join(format!("{name}.crt"));
    let ca_path = dir.join("ca.crt");
    files::write_secret(&key_path, kc.key_pem.as_bytes())?;
    files::write_public(&cert_path, r.cert_pem.as_bytes())?;
    files::write_public(&ca_path, r.ca_pem.as_bytes())?;
    match fmt {
        Format::Json => json_line(
            out,
            &json!({"name": name, "role": role.as_str(), "run_as": run_as, "hosts": hosts, "cert": cert_path, "key": key_path, "ca": ca_path}),
        )?,
        Format::Table => {
            writeln!(
                out,
                "User {name} ({role}): bundle written to {}",
                dir.display()
            )?;
            writeln!(out, "Use it with:")?;
            writeln!(
                out,
                "  picketctl --ca {} --cert {} --key {} status",
                ca_path.display(),
                cert_path.display(),
                key_path.display()
            )?;
        }
    }
    Ok(())
}

async fn revoke(
    admin: &mut Admin,
    name: String,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let r = admin
        .revoke_user(v1::RevokeUserRequest { name })
        .await
        .map_err(rpc)?
        .into_inner();
    match fmt {
        Format::Json => json_line(
            out,
            &json!({"name": r.name, "revoked": crate::output::time(r.revoked_unix_ms), "streams_cut": r.streams_cut}),
        )?,
        Format::Table => writeln!(
            out,
            "User {} revoked; {} open streams cut",
            r.name, r.streams_cut
        )?,
    }
    Ok(())
}

async fn list(admin: &mut Admin, fmt: Format, out: &mut impl Write) -> anyhow::Result<()> {
    let users = admin
        .list_users(v1::ListUsersRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .users;
    let role = |r: i32| picket_proto::convert::role(r).map_or("unknown", |r| r.as_str());
    let revoked = |ms: i64| (ms != 0).then(|| crate::output::time(ms)).flatten();
    match fmt {
        Format::Json => {
            for u in &users {
                json_line(
                    out,
                    &json!({"name": u.name, "role": role(u.role), "hosts": (!u.hosts.is_empty()).then_some(&u.hosts), "run_as": u.run_as, "created": crate::output::time(u.created_unix_ms), "revoked": revoked(u.revoked_unix_ms)}),
                )?;
            }
        }
        Format::Table => {
            let mut t = crate::output::Table::new(
                &mut *out,
                &["NAME", "ROLE", "HOSTS", "RUN-AS", "CREATED", "REVOKED"],
            )?;
            for u in &users {
                let run_as = if u.run_as.is_empty() {
                    "-".to_string()
                } else {
                    u.run_as.join(",")
                };
                let hosts = if u.hosts.is_empty() {
                    "all".to_string()
                } else {
                    u.hosts.clone()
                };
                t.row(&[
                    u.name.clone(),
                    role(u.role).to_string(),
                    hosts,
                    run_as,
                    crate::output::time(u.created_unix_ms).unwrap_or_default(),
                    revoked(u.revoked_unix_ms).unwrap_or_else(|| "-".into()),
                ])?;
            }
            t.finish()?;
        }
    }
    Ok(())
}
