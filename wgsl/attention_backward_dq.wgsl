// The dq kernel (attention_backward_common.wgsl says what it does), its own bindings.
//#windowed @binding(1, 20, 21, 22) var<storage, read> q: array<u32>;
//#windowed @binding(2, 23, 24, 25) var<storage, read> k: array<u32>;
//#windowed @binding(3, 26, 27, 28) var<storage, read> v: array<u32>;
//#windowed @binding(4, 29, 30, 31) var<storage, read> o: array<u32>;
//#windowed @binding(5, 32, 33, 34) var<storage, read> d_o: array<u32>;
@group(0) @binding(6) var<storage, read> partial_offsets: array<u32>;
@group(0) @binding(7) var<storage, read> partial: array<u32>;
@group(0) @binding(8) var<storage, read> full_offsets: array<u32>;
@group(0) @binding(9) var<storage, read> full: array<u32>;
@group(0) @binding(15) var<storage, read_write> delta: array<f32>;
//#windowed @binding(16, 35, 36, 37) var<storage, read_write> dq: array<u32>;

fn o4(base: u32, c: u32) -> vec4<f32> { let w = (base >> 1u) + 2u * c; return load4(o_at(w), o_at(w + 1u)); }

@compute @workgroup_size(128)
fn backward_dq(@builtin(local_invocation_id) local: vec3<u32>, @builtin(workgroup_id) group: vec3<u32>) {
    let q_block = group.x;
    let head = group.y;
    let batch = group.z;
    let i = q_block * params.block_m + local.x;      // this invocation's query
    let live = local.x < params.block_m && i < params.lq;
    let row_i = min(i, params.lq - 1u);
    let kv_head = head / (params.heads_q / params.heads_kv);
    let d4 = D / 4u;

    var q_row: array<vec4<f32>, MAX_D4>;
    var do_row: array<vec4<f32>, MAX_D4>;
    var dq_row: array<vec4<f32>, MAX_D4>;
    let q_base = row_start(0u, batch, row_i, head);
    let o_base = row_start(3u, batch, row_i, head);
    var row_d = vec4<f32>(0.0);
    let state_base = ((batch * params.heads_q + head) * params.lq + row_i) * D;
    for (var c = 0u; c < d4; c++) {
        q_row[c] = q4(q_base, c);
        do_row[c] = do4(o_base, c);
        row_d += do_row[c] * o4(o_base, c);
        dq_row[c] = vec4<f32>(0.0);
        if ((params.pass_flags & 1u) == 0u && live) {
            dq_row[c] = state4(state_base + 4u * c);
        }
    }
    let d_i = row_d.x + row_d.y + row_d.z + row_d.w;
    let lse_i = lse_of(batch, head, row_i);
    if (live && (params.pass_flags & 1u) != 0u) {
        delta[(batch * params.heads_q + head) * params.lq + i] = d_i;
    }

    let mask_b = select(batch, 0u, params.mask_batch == 1u);
    let mask_h = select(head, 0u, params.mask_heads == 1u);
    let row = (mask_b * params.mask_heads + mask_h) * params.q_blocks + q_block;
    let partial_count = partial_offsets[row + 1u] - partial_offsets[row];
    let listed = partial_count + full_offsets[row + 1u] - full_offsets[row];
    let pass_end = min(listed, params.pass_first + min(params.pass_count, listed));
    for (var n = params.pass_first; n < pass_end; n++) {
        let is_partial = n < partial_count;
        var kv_block = 0u;
        if (is_partial) {
            kv_block = partial[partial_offsets[row] + n];
        } else {
            kv_block = full[full_offsets[row] + n - partial_count];
        }
        let block_end = min((kv_block + 1u) * params.block_n, params.lk);
        for (var j0 = kv_block * params.block_n; j0 < block_end; j0 += CHUNK) {
            workgroupBarrier();  // the previous chunk's reads are done
            for (var r = 0u; r < CHUNK * MAX_D4 / THREADS; r++) {
                let e = r * THREADS + local.x;
                let jj = e / MAX_D4;
                let c = e % MAX_D4;
                let j = j0 + jj;
                var kv = vec4<f32>(0.0);
                var vv = vec4<f32>(0.0);
                if (j < params.lk && c < d4) {
                    kv = k4(row_start(1u, batch, j, kv_head), c);
                    vv = v4(row_start(2u, batch, j, kv_head), c);
                }
                tile_a[jj][c] = kv;
                tile_b[jj][c] = vv;
            }
            workgroupBarrier();
            for (var jj = 0u; jj < CHUNK; jj++) {
                let j = j0 + jj;
                if (!live || j >= block_end || (is_partial && !element_allows(i, j))) {
                    continue;
                }
                var s = vec4<f32>(0.0);
                var dp = vec4<f32>(0.0);
                for (var c = 0u; c < d4; c++) {
                    s += q_row[c] * tile_a[jj][c];
                    dp += do_row[c] * tile_b[jj][c];
                }
                let p = exp((s.x + s.y + s.z + s.w) * params.scale - lse_i);
                let ds = p * (dp.x + dp.y + dp.z + dp.w - d_i);
                for (var c = 0u; c < d4; c++) {
                    dq_row[c] += ds * tile_a[jj][c];
                }
            }
        }
    }
    if (!live) {
        return;
    }
    if ((params.pass_flags & 2u) == 0u) {
        for (var c = 0u; c < d4; c++) {
            save4(state_base + 4u * c, dq_row[c]);
        }
        return;
    }
    let base = ((batch * params.lq + i) * params.heads_q + head) * D;
    for (var c = 0u; c < d4; c++) {
        let words = gradient_words(dq_row[c] * params.scale);
        for (var e = 0u; e < gradient_words_per4(); e++) {
            dq_set(gradient_at(base, c) + e, words[e]);
        }
    }
}
