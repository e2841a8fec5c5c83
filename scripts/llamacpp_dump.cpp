// Dumps every f32 tensor llama.cpp computes for one prompt, in the format of ferrolm's
// FERROLM_TRACE (u32 name length, name, i64 ne[4], f32 data), for scripts/compare_trace.py.
//
// Build against the llama.cpp of the llama-cpp-python sdist (see README, "Reference outputs"):
//   LC=path/to/vendor/llama.cpp; LIB=path/to/build/bin
//   g++ -O2 -std=c++17 scripts/llamacpp_dump.cpp -I$LC/include -I$LC/ggml/include \
//       -L$LIB -lllama -lggml -lggml-base -Wl,-rpath,$LIB -o llamacpp_dump
// Run: llamacpp_dump MODEL.gguf 1,2,3 theirs.bin [1 = feed the ids one at a time]
// Flash attention is off, as in scripts/gen_golden_llamacpp.py.
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include <cstdlib>
static FILE* out;
static bool cb(struct ggml_tensor * t, bool ask, void * ud) {
    if (ask) return t->type == GGML_TYPE_F32;
    if (t->type != GGML_TYPE_F32) return true;
    size_t n = ggml_nelements(t);
    std::vector<float> buf(n);
    if (ggml_is_contiguous(t)) ggml_backend_tensor_get(t, buf.data(), 0, n*4);
    else return true;
    uint32_t len = strlen(t->name);
    fwrite(&len,4,1,out); fwrite(t->name,1,len,out);
    int64_t ne[4]={t->ne[0],t->ne[1],t->ne[2],t->ne[3]};
    fwrite(ne,8,4,out); fwrite(buf.data(),4,n,out);
    return true;
}
int main(int argc, char** argv) {
    const char* model_path = argv[1]; const char* ids_csv = argv[2]; out = fopen(argv[3], "wb");
    int incremental = argc > 4 ? atoi(argv[4]) : 0;
    llama_backend_init();
    auto mp = llama_model_default_params();
    llama_model* model = llama_model_load_from_file(model_path, mp);
    auto cp = llama_context_default_params();
    cp.n_ctx = 512; cp.n_batch = 512; cp.n_threads = 2; cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.cb_eval = cb; cp.cb_eval_user_data = nullptr;
    llama_context* ctx = llama_init_from_model(model, cp);
    std::vector<llama_token> toks; std::string s(ids_csv); size_t p=0;
    while (p < s.size()) { size_t q = s.find(',', p); if (q==std::string::npos) q=s.size(); toks.push_back(atoi(s.substr(p,q-p).c_str())); p=q+1; }
    if (!incremental) {
        llama_batch b = llama_batch_get_one(toks.data(), toks.size());
        if (llama_decode(ctx, b)) { fprintf(stderr,"decode failed\n"); return 1; }
    } else {
        for (size_t i=0;i<toks.size();i++){ llama_batch b = llama_batch_get_one(&toks[i],1); if (llama_decode(ctx,b)) return 1; }
    }
    fclose(out);
    return 0;
}
