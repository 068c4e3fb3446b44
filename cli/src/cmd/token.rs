//! `picketctl token create`: the token alone on stdout, so that
//! `TOKEN=$(picketctl token create)` works.

use std::io::Write;

use picket_proto::v1;
use serde_json::json;

use super::rpc;
use crate::args::{Format, TokenCmd};
use crate::client::Admin;
use crate::output::{json_line, time};

pub async fn run(
    admin: &mut Admin,
    cmd: TokenCmd,
    fmt: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let TokenCmd::Create { ttl, uses, labels } = cmd;
    let r = admin
        .create_token(v1::CreateTokenRequest {
            ttl_seconds: ttl.as_secs().max(1),
            uses,
            labels: labels.into_iter().collect(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    match fmt {
        Format::Table => writeln!(out, "{}", r.token)?,
        Format::Json => json_line(
            out,
            &json!({"token": r.token, "id": r.id, "expires": time(r.expires_unix_ms), "uses": r.uses}),
        )?,
    }
    Ok(())
}
