// llama.cpp's runtime logits for given token ids, for comparing against hubtools' reference forward.
//
// usage: llama_cpp_logits [--flash-attn] MODEL.gguf OUT.f32 ID [ID ...]
// Decodes the ids as one sequence (positions 0..n-1, one batch, every position's logits requested) on the CPU,
// one thread, float32 KV cache, flash attention off unless asked, and writes n_tokens x n_vocab float32
// (row-major, native byte order) to OUT.f32; prints "n_tokens n_vocab".
// llama.cpp's defaults (F16 KV cache, flash attention `auto`, on for the CPU) round through F16: on a tiny
// Mistral 4, max |dlogit| 2.8e-3 from the F16 cache alone, 4-6e-3 with flash attention, 4e-6 without either
// (tests/test_gguf_mistral4_runtime.py).
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    const bool flash_attn = argc > 1 && std::string(argv[1]) == "--flash-attn";
    if (flash_attn) {
        argc--;
        argv++;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: llama_cpp_logits [--flash-attn] MODEL.gguf OUT.f32 ID [ID ...]\n");
        return 2;
    }
    std::vector<llama_token> ids;
    for (int i = 3; i < argc; i++) {
        ids.push_back((llama_token) atoi(argv[i]));
    }
    const int n = (int) ids.size();
    llama_log_set(quiet, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (model == nullptr) {
        fprintf(stderr, "error: cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n < 256 ? 256 : n;
    cparams.n_batch = cparams.n_ctx;
    cparams.n_ubatch = cparams.n_ctx;
    cparams.n_threads = 1;
    cparams.n_threads_batch = 1;
    cparams.type_k = GGML_TYPE_F32;
    cparams.type_v = GGML_TYPE_F32;
    cparams.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        fprintf(stderr, "error: cannot create a context for %s\n", argv[1]);
        return 1;
    }
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "error: llama_decode failed\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE * out = fopen(argv[2], "wb");
    if (out == nullptr) {
        fprintf(stderr, "error: cannot write %s\n", argv[2]);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, out);
    }
    fclose(out);
    printf("%d %d\n", n, n_vocab);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
