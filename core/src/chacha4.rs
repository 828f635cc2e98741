//! ChaCha20 that makes four keystream blocks at a time, for attachment chunks.
//!
//! Every byte of every attachment goes through ChaCha20-Poly1305 twice: sealed by its
//! sender, opened by each recipient while it arrives. The `chacha20` crate has SIMD code for
//! x86 and ARM only; in the browser (wasm32) its portable code makes one 64-byte block at a
//! time, and that was a large share of a transfer's CPU time. This is the same cipher —
//! RFC 8439's ChaCha20: 20 rounds, 32-bit block counter, 96-bit nonce — computing four
//! consecutive blocks side by side, each in one 32-bit lane of four-lane words. In the
//! browser (the web client builds with Wasm SIMD, see `.cargo/config.toml`) each word is
//! one 128-bit vector, written with the `wasm32` intrinsics: rotations by 16 and 8 bits are
//! byte shuffles, and the blocks are written out by 4×4 transposes. Elsewhere the lanes are
//! plain arrays (scalar code).
//!
//! It plugs into the `chacha20poly1305` crate's AEAD ([`ChaCha20Poly1305x4`]), which still
//! does Poly1305 and the construction, so the ciphertext is byte for byte the standard
//! one: the tests compare it with the `chacha20` crate at every position and length, and
//! with RFC 8439's test vectors.

use chacha20poly1305::ChaChaPoly1305;
use cipher::consts::{U12, U32, U4, U64};
use cipher::{
    Block, BlockSizeUser, Iv, IvSizeUser, Key, KeyIvInit, KeySizeUser, ParBlocks,
    ParBlocksSizeUser, StreamCipherBackend, StreamCipherClosure, StreamCipherCore,
    StreamCipherCoreWrapper, StreamCipherSeekCore,
};

/// ChaCha20-Poly1305 (RFC 8439) whose ChaCha20 makes four blocks at a time.
pub type ChaCha20Poly1305x4 = ChaChaPoly1305<ChaCha20x4, U12>;

/// ChaCha20 (RFC 8439) as a stream cipher; see the module docs.
pub type ChaCha20x4 = StreamCipherCoreWrapper<ChaCha20x4Core>;

/// "expand 32-byte k".
const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// The cipher's state: constants, key, block counter (word 12) and nonce.
#[derive(Clone)]
pub struct ChaCha20x4Core {
    state: [u32; 16],
}

impl KeySizeUser for ChaCha20x4Core {
    type KeySize = U32;
}

impl IvSizeUser for ChaCha20x4Core {
    type IvSize = U12;
}

impl BlockSizeUser for ChaCha20x4Core {
    type BlockSize = U64;
}

impl KeyIvInit for ChaCha20x4Core {
    fn new(key: &Key<Self>, iv: &Iv<Self>) -> Self {
        let mut state = [0u32; 16];
        state[..4].copy_from_slice(&CONSTANTS);
        for (w, b) in state[4..12].iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        for (w, b) in state[13..].iter_mut().zip(iv.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        ChaCha20x4Core { state }
    }
}

impl StreamCipherCore for ChaCha20x4Core {
    fn remaining_blocks(&self) -> Option<usize> {
        (u32::MAX - self.state[12]).try_into().ok()
    }

    fn process_with_backend(&mut self, f: impl StreamCipherClosure<BlockSize = Self::BlockSize>) {
        f.call(&mut Backend(self));
    }
}

impl StreamCipherSeekCore for ChaCha20x4Core {
    type Counter = u32;

    fn get_block_pos(&self) -> u32 {
        self.state[12]
    }

    fn set_block_pos(&mut self, pos: u32) {
        self.state[12] = pos;
    }
}

/// Four 32-bit lanes: word `i` of four consecutive blocks. A 128-bit vector with Wasm SIMD
/// (LLVM does not vectorize the lane-wise version there).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[derive(Clone, Copy)]
struct Lanes(core::arch::wasm32::v128);

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Lanes {
    #[inline(always)]
    fn new(w: [u32; 4]) -> Self {
        Lanes(core::arch::wasm32::u32x4(w[0], w[1], w[2], w[3]))
    }

    #[inline(always)]
    fn splat(x: u32) -> Self {
        Lanes(core::arch::wasm32::u32x4_splat(x))
    }

    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Lanes(core::arch::wasm32::i32x4_add(self.0, o.0))
    }

    /// `(self ^ o) <<< n`. Rotations by whole bytes (16, 8) are one byte shuffle each
    /// instead of two shifts and an or (`n` is a constant once inlined).
    #[inline(always)]
    fn xor_rotl(self, o: Self, n: u32) -> Self {
        use core::arch::wasm32::{i8x16_shuffle, u32x4_shl, u32x4_shr, v128_or, v128_xor};
        let x = v128_xor(self.0, o.0);
        Lanes(match n {
            16 => i8x16_shuffle::<2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13>(x, x),
            8 => i8x16_shuffle::<3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14>(x, x),
            _ => v128_or(u32x4_shl(x, n), u32x4_shr(x, 32 - n)),
        })
    }

    /// Words `4 g .. 4 g + 4` of each of the four blocks, from those words' lanes
    /// (`w[i]` holds word `4 g + i` of blocks 0..4): a 4×4 transpose, written out as
    /// little-endian bytes, block `k` into `out[k]`.
    #[inline(always)]
    fn write_transposed(w: [Self; 4], out: &mut [[u8; 16]; 4]) {
        use core::arch::wasm32::{i32x4_shuffle, i64x2_shuffle, u64x2_extract_lane, v128};
        let t0 = i32x4_shuffle::<0, 4, 1, 5>(w[0].0, w[1].0);
        let t1 = i32x4_shuffle::<2, 6, 3, 7>(w[0].0, w[1].0);
        let t2 = i32x4_shuffle::<0, 4, 1, 5>(w[2].0, w[3].0);
        let t3 = i32x4_shuffle::<2, 6, 3, 7>(w[2].0, w[3].0);
        let rows: [v128; 4] = [
            i64x2_shuffle::<0, 2>(t0, t2),
            i64x2_shuffle::<1, 3>(t0, t2),
            i64x2_shuffle::<0, 2>(t1, t3),
            i64x2_shuffle::<1, 3>(t1, t3),
        ];
        for (o, r) in out.iter_mut().zip(rows) {
            o[..8].copy_from_slice(&u64x2_extract_lane::<0>(r).to_le_bytes());
            o[8..].copy_from_slice(&u64x2_extract_lane::<1>(r).to_le_bytes());
        }
    }
}

/// Four 32-bit lanes: word `i` of four consecutive blocks (plain code off the browser).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[derive(Clone, Copy)]
struct Lanes([u32; 4]);

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
impl Lanes {
    #[inline(always)]
    fn new(w: [u32; 4]) -> Self {
        Lanes(w)
    }

    #[inline(always)]
    fn splat(x: u32) -> Self {
        Lanes([x; 4])
    }

    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Lanes(std::array::from_fn(|i| self.0[i].wrapping_add(o.0[i])))
    }

    #[inline(always)]
    fn xor_rotl(self, o: Self, n: u32) -> Self {
        Lanes(std::array::from_fn(|i| (self.0[i] ^ o.0[i]).rotate_left(n)))
    }

    /// As the Wasm SIMD version: block `k`'s words `4 g .. 4 g + 4` into `out[k]`.
    #[inline(always)]
    fn write_transposed(w: [Self; 4], out: &mut [[u8; 16]; 4]) {
        for (k, o) in out.iter_mut().enumerate() {
            for (i, word) in w.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&word.0[k].to_le_bytes());
            }
        }
    }
}

#[inline(always)]
fn quarter_round(x: &mut [Lanes; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].add(x[b]);
    x[d] = x[d].xor_rotl(x[a], 16);
    x[c] = x[c].add(x[d]);
    x[b] = x[b].xor_rotl(x[c], 12);
    x[a] = x[a].add(x[b]);
    x[d] = x[d].xor_rotl(x[a], 8);
    x[c] = x[c].add(x[d]);
    x[b] = x[b].xor_rotl(x[c], 7);
}

/// Blocks `counter` .. `counter + 4` of `state`'s key and nonce, written to `out`
/// (`out.len()` of them, at most four; the counter wraps like RFC 8439's 32-bit one).
#[inline(always)]
fn blocks(state: &[u32; 16], out: &mut [Block<Backend<'_>>]) {
    let ctr = state[12];
    let mut input: [Lanes; 16] = std::array::from_fn(|i| Lanes::splat(state[i]));
    input[12] = Lanes::new([
        ctr,
        ctr.wrapping_add(1),
        ctr.wrapping_add(2),
        ctr.wrapping_add(3),
    ]);
    let mut x = input;
    for _ in 0..10 {
        quarter_round(&mut x, 0, 4, 8, 12);
        quarter_round(&mut x, 1, 5, 9, 13);
        quarter_round(&mut x, 2, 6, 10, 14);
        quarter_round(&mut x, 3, 7, 11, 15);
        quarter_round(&mut x, 0, 5, 10, 15);
        quarter_round(&mut x, 1, 6, 11, 12);
        quarter_round(&mut x, 2, 7, 8, 13);
        quarter_round(&mut x, 3, 4, 9, 14);
    }
    for (i, w) in x.iter_mut().enumerate() {
        *w = w.add(input[i]);
    }
    let mut bytes = [[[0u8; 16]; 4]; 4];
    for (g, group) in bytes.iter_mut().enumerate() {
        Lanes::write_transposed([x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]], group);
    }
    for (k, block) in out.iter_mut().enumerate() {
        for (g, group) in bytes.iter().enumerate() {
            block[16 * g..16 * g + 16].copy_from_slice(&group[k]);
        }
    }
}

struct Backend<'a>(&'a mut ChaCha20x4Core);

impl BlockSizeUser for Backend<'_> {
    type BlockSize = U64;
}

impl ParBlocksSizeUser for Backend<'_> {
    type ParBlocksSize = U4;
}

impl StreamCipherBackend for Backend<'_> {
    #[inline(always)]
    fn gen_ks_block(&mut self, block: &mut Block<Self>) {
        blocks(&self.0.state, core::slice::from_mut(block));
        self.0.state[12] = self.0.state[12].wrapping_add(1);
    }

    #[inline(always)]
    fn gen_par_ks_blocks(&mut self, out: &mut ParBlocks<Self>) {
        blocks(&self.0.state, out);
        self.0.state[12] = self.0.state[12].wrapping_add(4);
    }

    #[inline(always)]
    fn gen_tail_blocks(&mut self, out: &mut [Block<Self>]) {
        blocks(&self.0.state, out);
        self.0.state[12] = self.0.state[12].wrapping_add(out.len() as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::ChaCha20Poly1305;
    use cipher::{StreamCipher, StreamCipherSeek};

    fn ours(key: &[u8; 32], nonce: &[u8; 12]) -> ChaCha20x4 {
        ChaCha20x4::new(key.into(), nonce.into())
    }

    fn theirs(key: &[u8; 32], nonce: &[u8; 12]) -> chacha20::ChaCha20 {
        chacha20::ChaCha20::new(key.into(), nonce.into())
    }

    #[test]
    fn rfc_8439_keystream_and_encryption_vectors() {
        // Section 2.4.2: the sunscreen text, counter 1.
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let nonce = [0, 0, 0, 0, 0, 0, 0, 0x4a, 0, 0, 0, 0];
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
tip for the future, sunscreen would be it.";
        let mut buf = plain.to_vec();
        let mut c = ours(&key, &nonce);
        c.seek(64u64);
        c.apply_keystream(&mut buf);
        assert_eq!(
            hex::encode(&buf),
            "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b\
             f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8\
             07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736\
             5af90bbf74a35be6b40b8eedf2785e42874d"
        );
        // Section 2.8.2: the AEAD, with its tag.
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [7, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let sealed = ChaCha20Poly1305x4::new(&key.into())
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(
            hex::encode(&sealed),
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6\
             3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36\
             92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc\
             3ff4def08e4b7a9de576d26586cec64b6116\
             1ae10b594f09e26a7e902ecbd0600691"
        );
    }

    #[test]
    fn keystream_is_the_chacha20_crates_at_every_position_and_length() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        let nonce: [u8; 12] = std::array::from_fn(|i| (i * 13 + 1) as u8);
        let data: Vec<u8> = (0..1500u32).map(|i| (i * 31 % 251) as u8).collect();
        // Every start offset within a few blocks, every length up to past eight blocks:
        // the single, tail and four-block paths and every split between them.
        for start in [0u64, 1, 63, 64, 65, 127, 200, 256, 300] {
            for len in 0..=600 {
                let mut a = data[..len].to_vec();
                let mut b = a.clone();
                let mut x = ours(&key, &nonce);
                let mut y = theirs(&key, &nonce);
                x.seek(start);
                y.seek(start);
                x.apply_keystream(&mut a);
                y.apply_keystream(&mut b);
                assert_eq!(a, b, "start {start}, length {len}");
            }
        }
        // Pieces of odd sizes, one after another, as a chunk's encryption feeds it.
        let mut a = data.clone();
        let mut b = data.clone();
        let mut x = ours(&key, &nonce);
        theirs(&key, &nonce).apply_keystream(&mut b);
        let mut at = 0;
        for piece in [1, 5, 64, 3, 256, 1, 191, 700].into_iter().cycle() {
            let end = (at + piece).min(a.len());
            x.apply_keystream(&mut a[at..end]);
            at = end;
            if at == a.len() {
                break;
            }
        }
        assert_eq!(a, b);
    }

    #[test]
    fn the_block_counter_ends_where_rfc_8439s_does() {
        let key = [9u8; 32];
        let nonce = [4u8; 12];
        // The last blocks before the 32-bit counter runs out: as the reference.
        let mut a = vec![0u8; 2 * 64];
        let mut b = a.clone();
        let mut x = ours(&key, &nonce);
        let mut y = theirs(&key, &nonce);
        x.seek((u64::from(u32::MAX) - 2) * 64);
        y.seek((u64::from(u32::MAX) - 2) * 64);
        x.apply_keystream(&mut a);
        y.apply_keystream(&mut b);
        assert_eq!(a, b);
        // Past the end is refused, as by the reference.
        let mut more = [0u8; 1];
        assert!(y.try_apply_keystream(&mut more).is_err());
        assert!(x.try_apply_keystream(&mut more).is_err());
    }

    #[test]
    fn aead_is_the_chacha20poly1305_crates() {
        let key: [u8; 32] = std::array::from_fn(|i| (200 - i) as u8);
        let plain: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        for len in [0, 1, 64, 255, 256, 257, 61_440, 70_000] {
            let nonce: [u8; 12] = std::array::from_fn(|i| (len + i) as u8);
            let payload = || Payload {
                msg: &plain[..len],
                aad: b"id",
            };
            let a = ChaCha20Poly1305x4::new(&key.into())
                .encrypt(&nonce.into(), payload())
                .unwrap();
            let b = ChaCha20Poly1305::new(&key.into())
                .encrypt(&nonce.into(), payload())
                .unwrap();
            assert_eq!(a, b, "length {len}");
            let open = |bytes: &[u8]| {
                ChaCha20Poly1305x4::new(&key.into()).decrypt(
                    &nonce.into(),
                    Payload {
                        msg: bytes,
                        aad: b"id",
                    },
                )
            };
            assert_eq!(open(&a).unwrap(), &plain[..len]);
            let mut bad = a.clone();
            bad[len / 2] ^= 1;
            assert!(open(&bad).is_err(), "a changed byte is refused");
        }
    }
}
