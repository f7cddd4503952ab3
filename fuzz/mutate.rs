//! A deterministic mutator for the corpus tests (`tests/fuzz_corpus.rs`, `crates/ocellus-shm/tests/fuzz_corpus.rs`
//! include this file): a fixed seed and a fixed number of cases, so `make test` runs the same bounded set of
//! mutated inputs every time, without libFuzzer. Mutations are libFuzzer's simplest (bits, bytes, little-endian
//! words set to edge values, inserted, erased, copied and spliced ranges, dictionary tokens).

/// xorshift64*: small, fast, and the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const EDGE: [u64; 14] = [
    0,
    1,
    2,
    3,
    7,
    64,
    255,
    4096,
    65_535,
    65_536,
    1 << 31,
    1 << 32,
    u64::MAX / 2,
    u64::MAX,
];

/// `input` changed by one to four mutations; `others` give splice material, `tokens` dictionary words.
pub fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>], tokens: &[&[u8]]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(9) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0xff, 0x7f, 0x80, b'\n', b'"', b'[', b'='][rng.below(8)];
            }
            2 if v.len() >= 8 => {
                // An aligned word (the shared-memory layout's fields) or any 2, 4 or 8 bytes.
                let width = [2, 4, 8, 8][rng.below(4)];
                let mut at = rng.below(v.len() - width + 1);
                if width == 8 && rng.below(2) == 0 {
                    at -= at % 8;
                }
                let old = {
                    let mut b = [0u8; 8];
                    b[..width].copy_from_slice(&v[at..at + width]);
                    u64::from_le_bytes(b)
                };
                let value = match rng.below(3) {
                    0 => EDGE[rng.below(EDGE.len())],
                    1 => old.wrapping_add(1 + rng.below(16) as u64),
                    _ => old.wrapping_sub(1 + rng.below(16) as u64),
                };
                v[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            3 => {
                let at = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            4 if !v.is_empty() => {
                let at = rng.below(v.len());
                let n = 1 + rng.below((v.len() - at).min(64));
                v.drain(at..at + n);
            }
            5 if !v.is_empty() => {
                let from = rng.below(v.len());
                let n = 1 + rng.below((v.len() - from).min(64));
                let chunk = v[from..from + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            6 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 if !tokens.is_empty() => {
                let t = tokens[rng.below(tokens.len())];
                let at = rng.below(v.len() + 1);
                v.splice(at..at, t.iter().copied());
            }
            8 if !v.is_empty() => {
                v.truncate(rng.below(v.len()));
            }
            _ => {}
        }
    }
    v
}

/// `input` changed in place (same length) by one to four bit, byte or word mutations, at or after byte `from`:
/// for formats whose header fixes the length (a shared-memory segment), this reaches past the header.
pub fn mutate_in_place(rng: &mut Rng, input: &[u8], from: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    if v.len() <= from + 8 {
        return v;
    }
    for _ in 0..1 + rng.below(4) {
        let at = from + rng.below(v.len() - from - 8);
        match rng.below(3) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = rng.next() as u8,
            _ => {
                let at = at - at % 8;
                let value = EDGE[rng.below(EDGE.len())];
                v[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
    }
    v
}

/// Every file of `dir` but dot files (sorted by name; none if it does not exist).
pub fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}
