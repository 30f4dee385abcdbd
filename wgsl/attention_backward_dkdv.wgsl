// The dk/dv kernel (attention_backward_common.wgsl says what it does), its own bindings.
//#windowed @binding(1, 20, 21, 22) var<storage, read> q: array<u32>;
//#windowed @binding(2, 23, 24, 25) var<storage, read> k: array<u32>;
//#windowed @binding(3, 26, 27, 28) var<storage, read> v: array<u32>;
//#windowed @binding(5, 32, 33, 34) var<storage, read> d_o: array<u32>;
@group(0) @binding(10) var<storage, read> t_partial_offsets: array<u32>;
@group(0) @binding(11) var<storage, read> t_partial: array<u32>;
@group(0) @binding(12) var<storage, read> t_full_offsets: array<u32>;
@group(0) @binding(13) var<storage, read> t_full: array<u32>;
@group(0) @binding(15) var<storage, read> delta: array<f32>;
//#windowed @binding(17, 38, 39, 40) var<storage, read_write> dk: array<u32>;
//#windowed @binding(18, 41, 42, 43) var<storage, read_write> dv: array<u32>;

@compute @workgroup_size(128)
fn backward_dkdv(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let kv_block = group.x;
    let kv_head = group.y;
    let batch = group.z;
    let j = kv_block * params.block_n + local.x;     // this invocation's key
    let live = local.x < params.block_n && j < params.lk;
    let row_j = min(j, params.lk - 1u);
    let group_size = params.heads_q / params.heads_kv;
    let d4 = D / 4u;

    var k_row: array<vec4<f32>, MAX_D4>;
    var v_row: array<vec4<f32>, MAX_D4>;
    var dk_row: array<vec4<f32>, MAX_D4>;
    var dv_row: array<vec4<f32>, MAX_D4>;
    let k_base = row_start(1u, batch, row_j, kv_head);
    let v_base = row_start(2u, batch, row_j, kv_head);
    let state_base = ((batch * params.heads_kv + kv_head) * params.lk + row_j) * 2u * D;
    for (var c = 0u; c < d4; c++) {
        k_row[c] = k4(k_base, c);
        v_row[c] = v4(v_base, c);
        dk_row[c] = vec4<f32>(0.0);
        dv_row[c] = vec4<f32>(0.0);
        if ((params.pass_flags & 1u) == 0u && live) {
            dk_row[c] = state4(state_base + 4u * c);
            dv_row[c] = state4(state_base + D + 4u * c);
        }
    }

    let mask_b = select(batch, 0u, params.mask_batch == 1u);
    let pass_end = params.pass_first + min(params.pass_count, 0xffffffffu - params.pass_first);
    // The entries before each head's in the concatenation of the group's lists.
    var before = 0u;
    for (var g = 0u; g < group_size; g++) {
        let head = kv_head * group_size + g;
        let mask_h = select(head, 0u, params.mask_heads == 1u);
        let column = (mask_b * params.mask_heads + mask_h) * params.kv_blocks + kv_block;
        let partial_count = t_partial_offsets[column + 1u] - t_partial_offsets[column];
        let listed = partial_count + t_full_offsets[column + 1u] - t_full_offsets[column];
        let first = max(params.pass_first, before) - before;
        let end = max(min(pass_end, before + listed), before) - before;
        before += listed;
        for (var n = first; n < end; n++) {
            let is_partial = n < partial_count;
            var q_block = 0u;
            if (is_partial) {
                q_block = t_partial[t_partial_offsets[column] + n];
            } else {
                q_block = t_full[t_full_offsets[column] + n - partial_count];
            }
            let block_end = min((q_block + 1u) * params.block_m, params.lq);
            for (var i0 = q_block * params.block_m; i0 < block_end; i0 += CHUNK) {
                workgroupBarrier();  // the previous chunk's reads are done
                for (var r = 0u; r < CHUNK * MAX_D4 / THREADS; r++) {
                    let e = r * THREADS + local.x;
                    let ii = e / MAX_D4;
                    let c = e % MAX_D4;
                    let i = i0 + ii;
                    var qv = vec4<f32>(0.0);
                    var dov = vec4<f32>(0.0);
                    if (i < params.lq && c < d4) {
                        qv = q4(row_start(0u, batch, i, head), c);
                        dov = do4(row_start(3u, batch, i, head), c);
                    }
                    tile_a[ii][c] = qv;
                    tile_b[ii][c] = dov;
                }
                if (local.x < CHUNK) {
                    let i = min(i0 + local.x, params.lq - 1u);
                    row_lse[local.x] = lse_of(batch, head, i);
                    row_delta[local.x] = delta[(batch * params.heads_q + head) * params.lq + i];
                }
                workgroupBarrier();
                for (var ii = 0u; ii < CHUNK; ii++) {
                    let i = i0 + ii;
                    if (!live || i >= block_end || (is_partial && !element_allows(i, j))) {
                        continue;
                    }
                    var s = vec4<f32>(0.0);
                    var dp = vec4<f32>(0.0);
                    for (var c = 0u; c < d4; c++) {
                        s += tile_a[ii][c] * k_row[c];
                        dp += tile_b[ii][c] * v_row[c];
                    }
                    let p = exp((s.x + s.y + s.z + s.w) * params.scale - row_lse[ii]);
                    let ds = p * (dp.x + dp.y + dp.z + dp.w - row_delta[ii]);
                    for (var c = 0u; c < d4; c++) {
                        dv_row[c] += p * tile_b[ii][c];
                        dk_row[c] += ds * tile_a[ii][c];
                    }
                }
            }
        }
    }
    if (!live) {
        return;
    }
    if ((params.pass_flags & 2u) == 0u) {
        for (var c = 0u; c < d4; c++) {
            save4(state_base + 4u * c, dk_row[c]);
            save4(state_base + D + 4u * c, dv_row[c]);
        }
        return;
    }
    let base = ((batch * params.lk + j) * params.heads_kv + kv_head) * D;
    for (var c = 0u; c < d4; c++) {
        let dk_words = gradient_words(dk_row[c] * params.scale);
        let dv_words = gradient_words(dv_row[c]);
        for (var e = 0u; e < gradient_words_per4(); e++) {
            dk_set(gradient_at(base, c) + e, dk_words[e]);
            dv_set(gradient_at(base, c) + e, dv_words[e]);
        }
    }
}
