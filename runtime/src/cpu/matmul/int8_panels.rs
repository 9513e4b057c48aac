//! The layout of int8 weights for the dot-product kernels (AVX-512 VNNI `vpdpbusd`, Arm
//! `sdot`): panels of 16 output channels, each `[k_pad / 4][16][4]`. For every group of four `k`
//! steps, the 16 channels' four weights lie together (64 bytes): one AVX-512 register, or four
//! Neon registers of four channels each. Both instructions multiply four activation bytes by a
//! channel's four weight bytes and add the four products to that channel's i32 lane.

/// Output channels per panel.
pub const NR: usize = 16;

/// Packs `[n, k_pad]` row-major weights (k_pad a multiple of 4) into panels.
pub fn pack(rows: &[i8], n: usize, k_pad: usize) -> Vec<i8> {
    let quads = k_pad / 4;
    let mut panels = vec![0i8; n.div_ceil(NR) * quads * NR * 4];
    for (j, row) in rows.chunks_exact(k_pad).take(n).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            panels[index(quads, j, t)] = v;
        }
    }
    panels
}

/// Where channel `j`'s weight for step `t` lies in the panels.
pub fn index(quads: usize, j: usize, t: usize) -> usize {
    ((j / NR * quads + t / 4) * NR + j % NR) * 4 + t % 4
}
