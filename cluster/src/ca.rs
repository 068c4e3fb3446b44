//! The cluster's CA in etcd (SPEC §12): written once by `picket-control
//! init --cluster-etcd`, read by each `join`. Its private key is in etcd,
//! so etcd is as secret as the CA key file (docs/cluster.md).

use crate::etcd::{Etcd, EtcdError, created_at, put_op};

const CERT: &str = "/picket/ca/cert";
const KEY: &str = "/picket/ca/key";

/// Writes the CA (certificate and key, PEM) unless etcd holds one; false
/// when it does (nothing written).
pub async fn publish(etcd: &Etcd, cert_pem: &str, key_pem: &str) -> Result<bool, EtcdError> {
    let r = etcd
        .txn(
            vec![created_at(CERT, 0)],
            vec![
                put_op(CERT, cert_pem.as_bytes(), 0),
                put_op(KEY, key_pem.as_bytes(), 0),
            ],
            Vec::new(),
        )
        .await?;
    Ok(r.succeeded)
}

/// The CA's certificate and key (PEM), if etcd holds them.
pub async fn fetch(etcd: &Etcd) -> Result<Option<(String, String)>, EtcdError> {
    let (cert, _) = etcd.get(CERT).await?;
    let (key, _) = etcd.get(KEY).await?;
    Ok(match (cert, key) {
        (Some(c), Some(k)) => Some((
            String::from_utf8_lossy(&c.value).into_owned(),
            String::from_utf8_lossy(&k.value).into_owned(),
        )),
        _ => None,
    })
}
