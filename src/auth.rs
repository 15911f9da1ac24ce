//! Identity: agent password hashes (argon2), signed expiring tokens for agents
//! and customer resume tokens, the signing secret, and id generation.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::path::Path;

use crate::protocol::Role;

type HmacSha256 = Hmac<Sha256>;

/// Why a token of an account whose password changed since is refused.
pub const REVOKED: &str = "token: revoked (the password was changed): sign in again";

/// Name of the file in the data dir that keeps a generated secret.
const SECRET_FILE: &str = "secret";

/// What a token says about its holder.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Claims {
    /// User id (`a_..` for agents, `v_..` for customers).
    pub sub: String,
    /// Role: "agent" or "customer".
    pub role: Role,
    /// Display name at the time of issue.
    pub name: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix milliseconds (0 in tokens from before it was recorded:
    /// void once the account's password changes).
    #[serde(default)]
    pub iat: u64,
}

impl Claims {
    /// Time left before expiry.
    pub fn ttl(&self) -> std::time::Duration {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        std::time::Duration::from_secs(self.exp).saturating_sub(now)
    }
}

/// Signs and checks tokens with one HMAC-SHA256 key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    /// The key from `--secret`, else the one kept in `data_dir/secret`,
    /// generated on first use (32 random bytes, file mode 0600).
    pub fn load(secret: Option<&str>, data_dir: &Path) -> std::io::Result<Signer> {
        if let Some(s) = secret {
            return Ok(Signer::new(s.as_bytes()));
        }
        let path = data_dir.join(SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 32 => return Ok(Signer::new(s.trim().as_bytes())),
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is too short; delete it to generate a new one", path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let bytes: [u8; 32] = rand::thread_rng().gen();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, &hex)?;
        Ok(Signer::new(hex.as_bytes()))
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        let mut m = HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    pub fn issue(&self, sub: &str, role: Role, name: &str, ttl_secs: u64) -> String {
        let claims = Claims {
            sub: sub.to_string(),
            role,
            name: name.to_string(),
            exp: unix_secs() + ttl_secs,
            iat: crate::protocol::now_ms().max(0) as u64,
        };
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let sig = B64.encode(self.mac(payload.as_bytes()));
        format!("{payload}.{sig}")
    }

    /// The claims of a well-signed, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        let (payload, sig) = token.split_once('.').ok_or("malformed token")?;
        let sig = B64.decode(sig).map_err(|_| "malformed token")?;
        // verify_slice compares in constant time.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length");
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).map_err(|_| "bad token signature")?;
        let raw = B64.decode(payload).map_err(|_| "malformed token")?;
        let claims: Claims = serde_json::from_slice(&raw).map_err(|_| "malformed token")?;
        if claims.exp < unix_secs() {
            return Err("token expired");
        }
        Ok(claims)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    std::fs::write(path, content)
}

/// Argon2id hash in PHC string form.
pub fn hash_password(pw: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("could not hash password: {e}"))
}

/// True when `pw` matches the stored hash. CPU-heavy (tens of ms): call it off
/// the actor threads (`web::block`).
pub fn verify_password(pw: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default().verify_password(pw.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Threads that check passwords. Argon2 needs ~19 MiB per check; doing it on
/// a few long-lived threads bounds both that memory (the allocator keeps a
/// per-thread arena) and the CPU a flood of logins can take.
const PASSWORD_THREADS: usize = 2;

type PasswordJob = (String, String, tokio::sync::oneshot::Sender<bool>);

/// Checks a password on the password threads, without blocking the caller.
/// `None` when too many checks are already waiting (answer "busy", not "wrong").
pub async fn check_password(pw: String, hash: String) -> Option<bool> {
    static POOL: std::sync::OnceLock<std::sync::mpsc::SyncSender<PasswordJob>> = std::sync::OnceLock::new();
    let tx = POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<PasswordJob>(1024);
        let rx = std::sync::Arc::new(parking_lot::Mutex::new(rx));
        for i in 0..PASSWORD_THREADS {
            let rx = rx.clone();
            let _ = std::thread::Builder::new().name(format!("parley-password-{i}")).spawn(move || loop {
                let job = rx.lock().recv();
                match job {
                    Ok((pw, hash, reply)) => {
                        let _ = reply.send(verify_password(&pw, &hash));
                    }
                    Err(_) => return,
                }
            });
        }
        tx
    });
    let (reply, rx) = tokio::sync::oneshot::channel();
    if tx.try_send((pw, hash, reply)).is_err() {
        return None; // overloaded: refuse rather than queue without bound
    }
    rx.await.ok()
}

/// A hash to verify against when the name is unknown, so that a wrong name
/// and a wrong password take the same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// A random id with a type prefix: `c_`, `m_`, `v_`, `a_`. 80 random bits,
/// base-32 encoded; unique across nodes without coordination.
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + 16);
    s.push_str(prefix);
    for _ in 0..16 {
        s.push(ALPHABET[rng.gen_range(0..32)] as char);
    }
    s
}

/// A random password for the first `admin` account.
pub fn random_password() -> String {
    new_id("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_tamper() {
        let s = Signer::new(b"0123456789abcdef0123456789abcdef");
        let t = s.issue("a_1", Role::Agent, "Bo", 60);
        let c = s.verify(&t).unwrap();
        assert_eq!(c.sub, "a_1");
        assert_eq!(c.role, Role::Agent);
        let other = Signer::new(b"another key another key another k");
        assert!(other.verify(&t).is_err());
        let mut bad = t.clone();
        bad.insert(3, 'x');
        assert!(s.verify(&bad).is_err());
    }

    #[test]
    fn expired_token_is_refused() {
        let s = Signer::new(b"0123456789abcdef0123456789abcdef");
        let claims = Claims { sub: "v_1".into(), role: Role::Customer, name: "A".into(), exp: 1, iat: 0 };
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap());
        let sig = B64.encode(s.mac(payload.as_bytes()));
        assert_eq!(s.verify(&format!("{payload}.{sig}")), Err("token expired"));
    }

    #[test]
    fn password_hash_verifies() {
        let h = hash_password("pw1").unwrap();
        assert!(verify_password("pw1", &h));
        assert!(!verify_password("pw2", &h));
    }
}
