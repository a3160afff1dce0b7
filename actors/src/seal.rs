//! Sealing: authenticated encryption of small JSON documents (agent definitions, orchestration
//! rules, hooks) so that they never rest on disk in plain text.
//!
//! Format of a sealed blob: `version (1 byte) ‖ nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes)`,
//! where the ciphertext is XChaCha20-Poly1305 over the zstd-compressed JSON. Each file name has
//! its own key, derived with HKDF-SHA256 from the master key (salt `ccd-seal-v1`, info = the
//! name), and the associated data binds the name and the format version: a blob renamed,
//! swapped for another's, or altered in one byte fails to open. A fresh random nonce is drawn
//! for every seal. Keys are zeroized when dropped.

use std::path::Path;

use anyhow::Context as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The only format version so far.
pub const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const SALT: &[u8] = b"ccd-seal-v1";

/// A 32-byte key, wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> MasterKey {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&key);
        MasterKey(bytes)
    }

    /// From 64 hex digits.
    pub fn from_hex(hex: &str) -> anyhow::Result<MasterKey> {
        let hex = hex.trim();
        anyhow::ensure!(
            hex.len() == 64,
            "a master key is 32 bytes: 64 hex digits, got {} characters",
            hex.len()
        );
        anyhow::ensure!(
            hex.bytes().all(|c| c.is_ascii_hexdigit()),
            "a master key is hex digits only (0-9, a-f)"
        );
        let mut bytes = [0u8; 32];
        for (b, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            // Two ASCII hex digits, checked above.
            let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            *b = digit(pair[0]) << 4 | digit(pair[1]);
        }
        Ok(MasterKey(bytes))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `CCD_MASTER_KEY` if set, else `$CCD_HOME/master.key`, created (0600) on first use.
    pub fn load_or_create(home: &Path) -> anyhow::Result<MasterKey> {
        if let Ok(hex) = std::env::var("CCD_MASTER_KEY")
            && !hex.trim().is_empty()
        {
            return MasterKey::from_hex(&hex).context("reading CCD_MASTER_KEY");
        }
        let path = home.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(hex) => {
                MasterKey::from_hex(&hex).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key = MasterKey::generate();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                writeln!(f, "{}", key.to_hex())
                    .with_context(|| format!("writing {}", path.display()))?;
                f.sync_all().ok();
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The key for one file name.
    fn derive(&self, name: &str) -> Key {
        let hk = Hkdf::<Sha256>::new(Some(SALT), &self.0);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: this cannot fail.
        let _ = hk.expand(name.as_bytes(), &mut okm);
        Key(okm)
    }
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct Key([u8; 32]);

fn aad(name: &str) -> Vec<u8> {
    let mut aad = name.as_bytes().to_vec();
    aad.push(VERSION);
    aad
}

/// Seal `json` as the file `name`.
pub fn seal(master: &MasterKey, name: &str, json: &[u8]) -> anyhow::Result<Vec<u8>> {
    let compressed = zstd::bulk::compress(json, 3).context("compressing")?;
    let key = master.derive(name);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &compressed,
                aad: &aad(name),
            },
        )
        .map_err(|_| anyhow::anyhow!("sealing {name} failed"))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Open a blob sealed as `name`; fails if it was sealed under another name or key, or altered.
pub fn open(master: &MasterKey, name: &str, blob: &[u8]) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        blob.len() > 1 + NONCE_LEN + 16,
        "{name}: too short to be a sealed file"
    );
    anyhow::ensure!(
        blob[0] == VERSION,
        "{name}: unknown seal format version {}",
        blob[0]
    );
    let nonce = XNonce::from_slice(&blob[1..1 + NONCE_LEN]);
    let key = master.derive(name);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let compressed = cipher
        .decrypt(
            nonce,
            Payload {
                msg: &blob[1 + NONCE_LEN..],
                aad: &aad(name),
            },
        )
        .map_err(|_| anyhow::anyhow!("{name}: does not open: wrong key, wrong name, or altered"))?;
    // Bound the output: these are small documents; refuse a decompression bomb.
    zstd::bulk::decompress(&compressed, 64 * 1024 * 1024).context("decompressing")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_tamper_fails() {
        let k = MasterKey::generate();
        let json = br#"{"agents":[{"name":"reviewer","prompt":"be kind"}]}"#;
        let blob = seal(&k, "agents.sealed", json).unwrap();
        assert_eq!(open(&k, "agents.sealed", &blob).unwrap(), json);
        assert!(
            !blob.windows(7).any(|w| w == b"be kind"),
            "no plaintext in the blob"
        );
        // Another nonce each time.
        assert_ne!(seal(&k, "agents.sealed", json).unwrap(), blob);
        // Renamed, wrong key, any byte flipped: refused.
        assert!(open(&k, "hooks.sealed", &blob).is_err());
        assert!(open(&MasterKey::generate(), "agents.sealed", &blob).is_err());
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&k, "agents.sealed", &bad).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        assert!(open(&k, "agents.sealed", &blob[..10]).is_err());
    }

    #[test]
    fn hex_keys() {
        let k = MasterKey::generate();
        assert_eq!(MasterKey::from_hex(&k.to_hex()).unwrap().0, k.0);
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
        // 64 bytes that are not 64 ASCII characters: refused, not a slicing panic.
        let non_ascii = format!("é{}", "0".repeat(62));
        assert_eq!(non_ascii.len(), 64);
        let err = MasterKey::from_hex(&non_ascii)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("hex digits only"), "{err}");
        assert_eq!(MasterKey::from_hex(&"aF".repeat(32)).unwrap().0, [0xaf; 32]);
    }

    #[test]
    fn master_key_file_is_created_owner_only_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(MasterKey::load_or_create(dir.path()).unwrap().0, a.0);
    }
}
