// The flash-attention node alone, as SmolLM2-135M runs it (head size 64, 9 query heads over 3 KV heads, F16 K
// and V laid out as llama.cpp's cache views them, a causal F16 mask): loramux's batch-invariant mode
// (op_params[15], every row on the tiled path) against stock llama.cpp's choice of path for the same node
// (one-row for fewer than 64 rows, tiled for 64+, split-KV for one row over 512+ cells), alternated in one
// process. Built and run by bench/bench_attention.sh against the patched tree; prints a Markdown table.
#include "ggml-cpu.h"
#include "ggml.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

struct Case {
    const char * what;
    int rows;     // query rows per stream
    int streams;  // sequences (llama.cpp's separate KV streams)
    int cells;    // cells each stream holds (its last row sees them all)
    int view;     // cells in the K/V view (llama.cpp pads it to 256)
};

struct Node {
    ggml_context * ctx;
    ggml_cgraph * graph;
    ggml_tensor * out;
    std::vector<uint8_t> work;
    ggml_cplan plan;
};

Node build(const Case & c, int threads) {
    const int D = 64, H = 9, HKV = 3;
    ggml_init_params params = {size_t(64) << 20, nullptr, false};
    Node node{};
    node.ctx = ggml_init(params);
    ggml_context * ctx = node.ctx;
    ggml_tensor * q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, c.rows, H, c.streams);
    ggml_tensor * k_cache = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, D, HKV, c.view, c.streams);
    ggml_tensor * v_cache = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, D, HKV, c.view, c.streams);
    ggml_tensor * mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, c.view, c.rows, 1, c.streams);
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t i = 0; i < ggml_nelements(q); i++) {
        ((float *) q->data)[i] = normal(rng);
    }
    for (ggml_tensor * t : {k_cache, v_cache}) {
        for (int64_t i = 0; i < ggml_nelements(t); i++) {
            ((ggml_fp16_t *) t->data)[i] = ggml_fp32_to_fp16(normal(rng));
        }
    }
    auto * m = (ggml_fp16_t *) mask->data;
    for (int s = 0; s < c.streams; s++) {
        for (int r = 0; r < c.rows; r++) {
            for (int cell = 0; cell < c.view; cell++) {
                const bool seen = cell <= c.cells - c.rows + r;
                m[(s * c.rows + r) * c.view + cell] = ggml_fp32_to_fp16(seen ? 0.0f : -INFINITY);
            }
        }
    }
    ggml_tensor * k = ggml_permute(ctx, k_cache, 0, 2, 1, 3);
    ggml_tensor * v = ggml_permute(ctx, v_cache, 0, 2, 1, 3);
    node.out = ggml_flash_attn_ext(ctx, q, k, v, mask, 0.125f, 0.0f, 0.0f);
    node.graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(node.graph, node.out);
    node.plan = ggml_graph_plan(node.graph, threads, nullptr);
    node.work.resize(node.plan.work_size);
    node.plan.work_data = node.work.data();
    return node;
}

double run_us(Node & node, bool invariant, int iters) {
    ((int32_t *) node.out->op_params)[15] = invariant;
    ggml_graph_compute(node.graph, &node.plan);  // warm
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; i++) {
        ggml_graph_compute(node.graph, &node.plan);
    }
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / iters;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char ** argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    const int rounds = argc > 2 ? atoi(argv[2]) : 7;
    const Case cases[] = {
        {"decoding, 1 sequence", 1, 1, 20, 256},     {"decoding, 1 sequence", 1, 1, 75, 256},
        {"decoding, 1 sequence", 1, 1, 140, 256},    {"decoding, 1 sequence", 1, 1, 250, 256},
        {"decoding, 1 sequence", 1, 1, 600, 768},    {"decoding, 8 sequences", 1, 8, 100, 256},
        {"decoding, 16 sequences", 1, 16, 100, 256}, {"prompt chunk", 8, 1, 100, 256},
        {"prompt chunk", 64, 1, 64, 256},            {"prompt chunk", 512, 1, 512, 512},
    };
    printf("| node | rows x sequences | cells | stock's path (us) | batch-invariant (us) | stock / invariant |\n");
    printf("|---|---|---|---|---|---|\n");
    for (const Case & c : cases) {
        Node node = build(c, threads);
        // about 20 ms per measurement, alternating the two paths
        const int iters = std::max(3, int(20000.0 / std::max(1.0, run_us(node, false, 3))));
        std::vector<double> stock, invariant, ratio;
        for (int r = 0; r < rounds; r++) {
            stock.push_back(run_us(node, false, iters));
            invariant.push_back(run_us(node, true, iters));
            ratio.push_back(stock.back() / invariant.back());
        }
        printf("| %s | %d x %d | %d | %.1f | %.1f | **%.2fx** |\n", c.what, c.rows, c.streams, c.cells,
               median(stock), median(invariant), median(ratio));
        ggml_free(node.ctx);
    }
    return 0;
}
