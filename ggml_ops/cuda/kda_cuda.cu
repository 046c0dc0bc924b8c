// kda_cuda.cu - C entry points of the CUDA KDA op: validate (shared checker), translate the
// ggml-style tensor descriptions into kernel arguments, pick recurrent or chunked, launch.
#include "kimi_kda_cuda.h"

#include "kda_chunk.cuh"
#include "kda_chunk2.cuh"
#include "kda_chunk64.cuh"
#include "kda_recurrent.cuh"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

using namespace kimi_kda_cuda;

namespace {

int fail(char * err, size_t err_len, int code, const char * fmt, ...) {
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

// Chunked kernel is instantiated for these S (state slices of BV = 32 columns; 16 for S = 16).
bool chunk_supports(int64_t S) { return S == 16 || S == 32 || S == 64 || S == 128; }

// Below this many tokens the token-by-token kernel wins (one pass, no chunk set-up).
constexpr int64_t CHUNK_MIN_T = 32;

kimi_kda_algo resolve(const kimi_kda_params * p) {
    const int64_t S = p->v.ne[0], T = p->v.ne[2];
    if (!chunk_supports(S) || p->v.ne[1] > 65535) return KIMI_KDA_ALGO_RECURRENT;  // prep grid.y = H
    if (p->algo == KIMI_KDA_ALGO_RECURRENT) return KIMI_KDA_ALGO_RECURRENT;
    if (p->algo == KIMI_KDA_ALGO_CHUNKED) return KIMI_KDA_ALGO_CHUNKED;
    return T >= CHUNK_MIN_T ? KIMI_KDA_ALGO_CHUNKED : KIMI_KDA_ALGO_RECURRENT;
}

// floats per byte stride; the kernels use float4/cp.async on rows, so rows must be 16-byte aligned
bool strides4(const kimi_kda_tensor & t, int first, int64_t out[4]) {
    for (int d = first; d < 4; ++d) {
        if (t.nb[d] % 16 != 0 && t.ne[d] > 1) return false;
        out[d] = (int64_t) (t.nb[d] / sizeof(float));
    }
    return ((uintptr_t) t.data % 16) == 0;
}

// Opt in to > 48 KiB of dynamic shared memory, once per kernel and device (and so never inside a
// stream capture after the first eager call). done: the calling launcher's own flags (one launcher
// instantiation per kernel: kernels of one signature share a function-pointer type).
template <typename K>
cudaError_t raise_smem(K kern, size_t smem, bool * done, bool max_carveout = false) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    if (dev < 0 || dev >= 64 || !done[dev]) {
        e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem);
        // max_carveout: the whole unified L1 / shared array as shared memory, so that several CTAs
        // of a large-smem kernel fit on one SM
        if (e == cudaSuccess && max_carveout)
            e = cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout, (int) cudaSharedmemCarveoutMaxShared);
        if (e != cudaSuccess) return e;
        if (dev >= 0 && dev < 64) done[dev] = true;
    }
    return cudaSuccess;
}

// Two-kernel chunked path over a.t_begin..a.t_end: prep (all chunks in parallel) then state.
template <int S, int BV, int MATH, int NA = 1, int UNR = 0>
cudaError_t launch_two(const Args & a, float * ws, cudaStream_t st) {
    const int n_chunks = (a.t_end - a.t_begin + CK_C - 1) / CK_C;
    auto prep = kda_prep_kernel<S, MATH>;
    auto state = kda_state_kernel<S, BV, MATH, NA, UNR>;
    static bool done_prep[64] = {}, done_state[64] = {};
    cudaError_t e = raise_smem(prep, PrepSmem<S>::bytes, done_prep);
    if (e == cudaSuccess) e = raise_smem(state, StateSmem<S, BV>::bytes, done_state);
    if (e != cudaSuccess) return e;
    // KIMI_KDA_CUDA_PROFILE=prep|state launches only that kernel (timing the split; output invalid)
    const char * prof = getenv("KIMI_KDA_CUDA_PROFILE");
    const bool only_prep = prof && prof[0] == 'p', only_state = prof && prof[0] == 's';
    if (!only_state)
        prep<<<dim3(n_chunks, a.H, a.n_seqs), CK_THREADS, PrepSmem<S>::bytes, st>>>(a, ws, n_chunks);
    if (!only_prep)
        state<<<dim3(a.H, a.n_seqs, S / BV), state_warps<BV>() * 32, StateSmem<S, BV>::bytes, st>>>(a, ws, n_chunks);
    return cudaGetLastError();
}

// Value columns per state-kernel CTA: $KIMI_KDA_CUDA_BV = 16 or 32 (read per call, for the
// benchmark's A/B), else the default measured faster on an H100 (BENCHMARKS.md).
constexpr int STATE_BV_DEFAULT = 32;
int state_bv() {
    const char * e = getenv("KIMI_KDA_CUDA_BV");
    const int v = e ? atoi(e) : 0;
    return v == 16 || v == 32 ? v : STATE_BV_DEFAULT;
}

// S = 128 state-kernel knobs for the A/B: $KIMI_KDA_CUDA_SV = "<NA><UNR>" (e.g. "41": 4 chains,
// unrolled row tiles), else the default.
constexpr int STATE_SV_DEFAULT = 10;
template <int BV, int MATH>
cudaError_t launch_two_128(const Args & a, float * ws, cudaStream_t st) {
    const char * e = getenv("KIMI_KDA_CUDA_SV");
    switch (e ? atoi(e) : STATE_SV_DEFAULT) {
        case 11: return launch_two<128, BV, MATH, 1, 1>(a, ws, st);
        case 40: return launch_two<128, BV, MATH, 4, 0>(a, ws, st);
        case 41: return launch_two<128, BV, MATH, 4, 1>(a, ws, st);
        case 21: return launch_two<128, BV, MATH, 2, 1>(a, ws, st);
        default: return launch_two<128, BV, MATH, 1, 0>(a, ws, st);
    }
}

template <int MATH>
cudaError_t launch_two_s(const Args & a, float * ws, cudaStream_t st) {
    const bool narrow = state_bv() == 16;
    switch (a.S) {
        case 16:  return launch_two<16, 16, MATH>(a, ws, st);
        case 32:  return narrow ? launch_two<32, 16, MATH>(a, ws, st) : launch_two<32, 32, MATH>(a, ws, st);
        case 64:  return narrow ? launch_two<64, 16, MATH>(a, ws, st) : launch_two<64, 32, MATH>(a, ws, st);
        case 128: return narrow ? launch_two_128<16, MATH>(a, ws, st) : launch_two_128<32, MATH>(a, ws, st);
        default:  return cudaErrorInvalidValue;
    }
}

int64_t item_floats(int64_t S) { return 4 * CK_C * S + CK_C * CK_C + S; }

int env_int(const char * name, int dflt) {
    const char * e = getenv(name);
    return e ? atoi(e) : dflt;
}

// 64-token 16-bit path (kda_chunk64.cuh): prep (all chunks in parallel) then state.
constexpr int PREP7_DELAY_DEFAULT = 0;
constexpr int PREP7_PERSIST_DEFAULT = 0;
// $KIMI_KDA_CUDA_PREP7_DIAG = 0..3: v7 prep phase (2), the diagonal 16 x 16 blocks: 0 by CUDA-core running
// products; 1-3 by fp16 mma over 4-token mini-blocks (prep7_diag_mma): 1 fp16 operands, 2 the Aqk product
// with split (hi + lo) operands, 3 both products split
// (2: the accuracy of 0 and 3, -25 us at T = 8192; 1: -55 us but f16 errors up to 14% larger, H100 10:49)
constexpr int PREP7_DIAG_DEFAULT = 2;
// part: 0 both kernels, 1 the prep only, 2 the state only (the overlapped segments of
// kimi_kda_forward_cuda_ws launch them on two streams)
template <typename E>
cudaError_t launch_c64(const Args & a, char * ws, cudaStream_t st, int part = 0) {
    const int n_chunks = (a.t_end - a.t_begin + C64 - 1) / C64;
    auto prep7 = kda_prep64v7_kernel<E>;
    // $KIMI_KDA_CUDA_STATE_NS = 2: two stages of chunk operands in flight in the state kernel (A/B), else 3
    const bool ns2 = env_int("KIMI_KDA_CUDA_STATE_NS", 3) == 2;
    auto state = ns2 ? kda_state64_kernel<E, 2> : kda_state64_kernel<E, 3>;
    const size_t state_smem = ns2 ? State64Smem::At<2>::bytes : State64Smem::At<3>::bytes;
    static bool done_prep7[64] = {}, done_state[2][64] = {};
    cudaError_t e = raise_smem(prep7, Prep7Smem::bytes, done_prep7, true);
    if (e == cudaSuccess) e = raise_smem(state, state_smem, done_state[ns2], true);
    if (e != cudaSuccess) return e;
    const char * prof = getenv("KIMI_KDA_CUDA_PROFILE");
    const bool only_prep = part ? part == 1 : (prof && prof[0] == 'p');
    const bool only_state = part ? part == 2 : (prof && prof[0] == 's');
    // $KIMI_KDA_CUDA_PREP_STOP = n: the prep kernel stops after phase n (timing its phases; output invalid)
    const int stop = env_int("KIMI_KDA_CUDA_PREP_STOP", 0);
    // $KIMI_KDA_CUDA_PREP7_DELAY = ns: start delay of the second CTA per SM in v7's first wave
    const int delay = env_int("KIMI_KDA_CUDA_PREP7_DELAY", PREP7_DELAY_DEFAULT);
    // $KIMI_KDA_CUDA_PREP7_PERSIST = 0 / 1: one item per CTA / 2 CTAs per SM looping over the items
    const int persist = env_int("KIMI_KDA_CUDA_PREP7_PERSIST", PREP7_PERSIST_DEFAULT) != 0;
    const int diag_env = env_int("KIMI_KDA_CUDA_PREP7_DIAG", PREP7_DIAG_DEFAULT);
    const int diag7 = diag_env >= 0 && diag_env <= 3 ? diag_env : PREP7_DIAG_DEFAULT;
    int nsm = 132;
    if (persist) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || nsm <= 0) {
            (void) cudaGetLastError();
            nsm = 132;
        }
    }
    if (!only_state) {
        if (!persist) prep7<<<dim3(n_chunks, a.H, a.n_seqs), 256, Prep7Smem::bytes, st>>>(a, ws, n_chunks, stop, delay, 0, diag7);
        else {
            const int64_t items = (int64_t) n_chunks * a.H * a.n_seqs;
            const int64_t grid = items < 2 * nsm ? items : 2 * nsm;
            prep7<<<dim3((unsigned) grid), 256, Prep7Smem::bytes, st>>>(a, ws, n_chunks, stop, delay, 1, diag7);
        }
    }
    if (!only_prep)
        state<<<dim3(a.H, a.n_seqs, C64_S / C64_BV), C64_THREADS, state_smem, st>>>(a, ws, n_chunks);
    return cudaGetLastError();
}

// ---- v8: overlapped segments of the 64-token path ----------------------------------------------
// The prep of segment k + 1 (on the caller's stream) runs while the state kernel of segment k runs on
// an internal non-blocking stream of the greatest priority (the state kernel is latency bound and
// leaves most issue slots free).
// Two or more workspace buffers: prep k + nbuf waits for state k. Event fork / join, so the sequence is
// also captured into a CUDA graph as one fork / join.
// $KIMI_KDA_CUDA_OVL = n: about n segments (0 or 1: off, the v7 sequence); the workspace cap may
// make them more. $KIMI_KDA_CUDA_OVL_PRIO = 0: the internal stream at the least priority (A/B).
// $KIMI_KDA_CUDA_OVL_HEAD / _TAIL = n: a first / last segment of n chunks (small: less of the prep
// runs before any state, less of the state after the last prep); $KIMI_KDA_CUDA_OVL_NBUF = 2..4:
// workspace buffers in the ring (as many as fit, at most this many).
constexpr int OVL_SEGMENTS_DEFAULT = 0, OVL_HEAD_DEFAULT = 0, OVL_TAIL_DEFAULT = 0, OVL_NBUF_DEFAULT = 2;
constexpr int OVL_NBUF_MAX = 4;
struct OvlRes {
    cudaStream_t ss = nullptr;
    cudaEvent_t ep = nullptr, es[OVL_NBUF_MAX] = {};
    int state = 0;  // 0 not made yet, 1 ready, -1 failed (no overlap on this device)
};
std::mutex ovl_mu;
OvlRes ovl_res[64][2];  // [device][greatest priority]

// the calling thread holds ovl_mu
OvlRes * ovl_get(bool prio) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) { (void) cudaGetLastError(); return nullptr; }
    OvlRes & r = ovl_res[dev][prio ? 1 : 0];
    if (r.state == 0) {
        int least = 0, greatest = 0;
        bool ok = cudaDeviceGetStreamPriorityRange(&least, &greatest) == cudaSuccess;
        ok = ok && cudaStreamCreateWithPriority(&r.ss, cudaStreamNonBlocking, prio ? greatest : least) == cudaSuccess;
        ok = ok && cudaEventCreateWithFlags(&r.ep, cudaEventDisableTiming) == cudaSuccess;
        for (int i = 0; i < OVL_NBUF_MAX; ++i)
            ok = ok && cudaEventCreateWithFlags(&r.es[i], cudaEventDisableTiming) == cudaSuccess;
        if (!ok) (void) cudaGetLastError();
        r.state = ok ? 1 : -1;
    }
    return r.state == 1 ? &r : nullptr;
}

// The segment plan (chunks per segment) for `chunks` chunks: a head of `head` chunks, body segments
// of ceil(body / (ovl - parts for head, tail)) chunks (at most max_sc; the last body segment takes the
// rest), a tail of `tail` chunks (head, tail: 0 = none). Empty if fewer than 2 segments.
std::vector<int64_t> ovl_plan(int64_t chunks, int ovl, int64_t head, int64_t tail, int64_t max_sc) {
    std::vector<int64_t> plan;
    if (max_sc < 1 || ovl < 2) return plan;
    head = head < 0 ? 0 : (head > max_sc ? max_sc : head);
    tail = tail < 0 ? 0 : (tail > max_sc ? max_sc : tail);
    if (head + tail >= chunks) head = tail = 0;
    const int64_t body = chunks - head - tail;
    int64_t nb = ovl - (head > 0) - (tail > 0);
    if (nb < 1) nb = 1;
    int64_t part = (body + nb - 1) / nb;
    if (part > max_sc) part = max_sc;
    if (head) plan.push_back(head);
    for (int64_t b = 0; b < body; b += part) plan.push_back(body - b < part ? body - b : part);
    if (tail) plan.push_back(tail);
    if (plan.size() < 2) plan.clear();
    return plan;
}

// c: the chunked range (t_begin = 0, t_end = t_split); a.s_out receives each segment's state, which
// the next one starts from. ws holds nbuf buffers of buf_chunks chunks (a ring: prep k waits for
// state k - nbuf).
template <typename E>
cudaError_t launch_c64_overlap(const Args & c, char * ws, const std::vector<int64_t> & plan, int64_t buf_chunks,
                               int nbuf, int64_t t_split, OvlRes * r, cudaStream_t st) {
    const int64_t S = C64_S, H = c.H, nseg = (int64_t) plan.size();
    const size_t buf = (size_t) (buf_chunks * c.n_seqs * H) * Item64::size;
    cudaError_t e = cudaSuccess;
    int64_t t0 = 0;
    for (int64_t k = 0; k < nseg && e == cudaSuccess; ++k) {
        Args sgm = c;
        sgm.t_begin = (int) t0;
        t0 += plan[k] * C64;
        sgm.t_end = (int) (t0 < t_split ? t0 : t_split);
        if (k > 0) { sgm.s_in = c.s_out; sgm.s1 = S; sgm.s2 = S * S; sgm.s3 = S * S * H; }
        char * wk = ws + (k % nbuf) * buf;
        if (k >= nbuf) e = cudaStreamWaitEvent(st, r->es[k % nbuf], 0);  // state k - nbuf is done with this buffer
        if (e == cudaSuccess) e = launch_c64<E>(sgm, wk, st, 1);
        if (e == cudaSuccess) e = cudaEventRecord(r->ep, st);
        if (e == cudaSuccess) e = cudaStreamWaitEvent(r->ss, r->ep, 0);
        if (e == cudaSuccess) e = launch_c64<E>(sgm, wk, r->ss, 2);
        if (e == cudaSuccess) e = cudaEventRecord(r->es[k % nbuf], r->ss);
    }
    if (e == cudaSuccess) e = cudaStreamWaitEvent(st, r->es[(nseg - 1) % nbuf], 0);  // join
    return e;
}

// Tokens per segment of the 64-token path: workspace under about 320 MiB, or $KIMI_KDA_CUDA_SEG
// (rounded down to a multiple of 64, at least 64).
int64_t segment_tokens64(int64_t H, int64_t NS) {
    const char * e = getenv("KIMI_KDA_CUDA_SEG");
    const long long v = e ? atoll(e) : 0;
    if (v > 0) return v >= C64 ? (v / C64) * C64 : C64;
    const double per_token = (double) NS * H * Item64::size / C64;
    const int64_t seg = (int64_t) (320.0 * 1024 * 1024 / per_token) / C64 * C64;
    return seg < C64 ? C64 : seg;
}

// Workspace bytes of the 64-token path for T tokens.
size_t ws_bytes64(int64_t H, int64_t NS, int64_t T) {
    const int64_t sg = segment_tokens64(H, NS), seg = T < sg ? T : sg;
    return (size_t) (NS * H * ((seg + C64 - 1) / C64)) * Item64::size;
}

// Tokens per prep+state segment: bounds the workspace (to about 320 MiB;
// 4096-token segments measured 8% faster than 1024 at T = 8192 on an H100), or $KIMI_KDA_CUDA_SEG.
int64_t segment_tokens(int64_t S, int64_t H, int64_t NS) {
    const char * e = getenv("KIMI_KDA_CUDA_SEG");  // read per call: cheap, and tunable at run time
    const long long v = e ? atoll(e) : 0;
    if (v >= CK_C) return (v / CK_C) * CK_C;
    const double per_token = (double) NS * H * item_floats(S) * sizeof(float) / CK_C;
    const int64_t seg = (int64_t) (320.0 * 1024 * 1024 / per_token) / CK_C * CK_C;
    return seg < CK_C ? CK_C : seg;
}

template <int S, int BV, int MATH>
cudaError_t launch_chunk(const Args & a, cudaStream_t st) {
    auto kern = kda_chunk_kernel<S, BV, MATH>;
    const size_t smem = ChunkSmem<S, BV>::bytes;
    static bool done[64] = {};
    cudaError_t e = raise_smem(kern, smem, done);
    if (e != cudaSuccess) return e;
    dim3 grid(a.H, a.n_seqs, S / BV);
    kern<<<grid, CK_THREADS, smem, st>>>(a);
    return cudaGetLastError();
}

template <int MATH>
cudaError_t launch_chunk_s(const Args & a, cudaStream_t st) {
    switch (a.S) {
        case 16:  return launch_chunk<16, 16, MATH>(a, st);
        case 32:  return launch_chunk<32, 32, MATH>(a, st);
        case 64:  return launch_chunk<64, 32, MATH>(a, st);
        case 128: return launch_chunk<128, 32, MATH>(a, st);
        default:  return cudaErrorInvalidValue;
    }
}

// Programmatic dependent launch for the token-by-token kernels (they call pdl_wait() before any
// global access): used where the device is sm_90+ and the kernel's PTX has griddepcontrol (a kernel
// JIT-compiled from sm_80 PTX has not: it must not overlap its predecessor). $KIMI_KDA_CUDA_PDL=0
// turns it off (A/B). ok: the calling launcher's per-device cache (-1 unknown, 0 no, 1 yes).
struct PdlCache {
    signed char ok[64];
    PdlCache() { memset(ok, -1, sizeof ok); }
};
bool pdl_wanted() {
    const char * env = getenv("KIMI_KDA_CUDA_PDL");
    return !(env && env[0] == '0');
}
template <typename K, typename... A>
cudaError_t launch_maybe_pdl(K kern, dim3 grid, dim3 block, cudaStream_t st, signed char * ok, const A &... args) {
    bool pdl = pdl_wanted();
    int dev = 0;
    if (pdl && cudaGetDevice(&dev) == cudaSuccess && dev >= 0 && dev < 64) {
        if (ok[dev] < 0) {
            int major = 0;
            cudaFuncAttributes fa{};
            const bool yes = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                             cudaFuncGetAttributes(&fa, kern) == cudaSuccess && major >= 9 && fa.ptxVersion >= 90;
            (void) cudaGetLastError();
            ok[dev] = yes ? 1 : 0;
        }
        pdl = ok[dev] == 1;
    } else {
        pdl = false;
    }
    if (pdl) {
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg{};
        cfg.gridDim = grid; cfg.blockDim = block; cfg.dynamicSmemBytes = 0; cfg.stream = st;
        cfg.attrs = attr; cfg.numAttrs = 1;
        return cudaLaunchKernelEx(&cfg, kern, args...);
    }
    kern<<<grid, block, 0, st>>>(args...);
    return cudaGetLastError();
}

template <int NR, int CPW, int NW>
cudaError_t launch_rc(const Args & a, cudaStream_t st) {
    static PdlCache cache;  // one per kernel instance
    const dim3 grid(a.H, a.n_seqs, (a.S + CPW * NW - 1) / (CPW * NW));
    return launch_maybe_pdl(kda_recurrent_kernel<NR, CPW, NW>, grid, dim3(NW * 32), st, cache.ok, a);
}

// One-token step (decode): kda_decode_kernel, NR float4 per lane and column, CPW columns per warp.
// Flags: early trigger and L2 prefetch of the state before the grid-dependency wait (both measured
// faster on an H100, run of 07:31: 2.16 / 2.81 us hot / cold vs 2.22 / 3.25 without the prefetch,
// 2.27 / 3.76 without the trigger). A/B: $KIMI_KDA_CUDA_PDL=2 drops the trigger, $KIMI_KDA_CUDA_PF=0
// the prefetch.
template <int NR, int CPW, int NW>
cudaError_t launch_dec(const Args & a, cudaStream_t st) {
    static PdlCache cache;  // one per kernel instance
    const dim3 grid(a.H, a.n_seqs, (a.S + CPW * NW - 1) / (CPW * NW));
    const char * pdl = getenv("KIMI_KDA_CUDA_PDL");
    const char * pf = getenv("KIMI_KDA_CUDA_PF");
    const int flags = (pdl && pdl[0] == '2' ? 0 : DEC_TRIGGER) | (pf && pf[0] == '0' ? 0 : DEC_PREFETCH);
    return launch_maybe_pdl(kda_decode_kernel<NR, CPW, NW>, grid, dim3(NW * 32), st, cache.ok, a, flags);
}

// Token-by-token layouts (value columns per warp x warps per CTA); $KIMI_KDA_CUDA_RC = "CPWxNW"
// picks one for the benchmark's A/B, else the default measured fastest for decode on an H100.
// A single final token (decode) runs kda_decode_kernel in layout $KIMI_KDA_CUDA_DEC = "CPWxNW"
// (default DEC_LAYOUT_DEFAULT), or the multi-token kernel with $KIMI_KDA_CUDA_DEC=rc (A/B).
constexpr int RC_LAYOUT_DEFAULT = 28;  // 2 x 8: 4.45 vs 4.97 us (2 x 4) L2-cold, run of 06:03
constexpr int DEC_LAYOUT_DEFAULT = 28;
int parse_layout(const char * e, int dflt) {
    if (!e) return dflt;
    const int cpw = atoi(e), nw = strchr(e, 'x') ? atoi(strchr(e, 'x') + 1) : 0;
    return 10 * cpw + nw;
}
cudaError_t launch_recurrent(const Args & a, cudaStream_t st) {
    const char * dec = getenv("KIMI_KDA_CUDA_DEC");
    if (a.t_end - a.t_begin == 1 && a.t_end == a.T_total && !(dec && dec[0] == 'r')) {
        if (a.S > 128) return launch_dec<2, 2, 8>(a, st);
        switch (parse_layout(dec, DEC_LAYOUT_DEFAULT)) {
            case 14: return launch_dec<1, 1, 4>(a, st);
            case 18: return launch_dec<1, 1, 8>(a, st);
            case 24: return launch_dec<1, 2, 4>(a, st);
            case 44: return launch_dec<1, 4, 4>(a, st);
            case 48: return launch_dec<1, 4, 8>(a, st);
            case 36: return launch_dec<1, 2, 16>(a, st);  // 2 x 16
            default: return launch_dec<1, 2, 8>(a, st);
        }
    }
    if (a.S > 128) return launch_rc<2, 2, 4>(a, st);
    switch (parse_layout(getenv("KIMI_KDA_CUDA_RC"), RC_LAYOUT_DEFAULT)) {
        case 14: return launch_rc<1, 1, 4>(a, st);   // 4 columns per CTA
        case 42: return launch_rc<1, 4, 2>(a, st);   // 8 columns, 64 threads
        case 28: return launch_rc<1, 2, 8>(a, st);   // 16 columns, 256 threads
        case 48: return launch_rc<1, 4, 8>(a, st);   // 32 columns, 256 threads
        case 44: return launch_rc<1, 4, 4>(a, st);   // 16 columns, 128 threads
        default: return launch_rc<1, 2, 4>(a, st);   // 8 columns, 128 threads
    }
}

// The CUDA kernels' own limits beyond kimi_kda_check (S_v a multiple of 16 up to RC_MAX_S, launch
// sizes, 16-byte aligned rows and dst), and the kernel arguments of p. Never touches the data.
int make_args(const kimi_kda_params * p, Args * a, char * err, size_t err_len) {
    const int64_t S = p->v.ne[0], H = p->v.ne[1], T = p->v.ne[2], NS = p->v.ne[3];
    if (S % 16 != 0 || S > RC_MAX_S)
        return fail(err, err_len, KIMI_KDA_ERR_SHAPE, "kimi_kda_forward_cuda: S_v = %lld unsupported (multiple of 16, <= %d)",
                    (long long) S, RC_MAX_S);
    if (H > 2147483647LL || NS > 65535 || T > 2147483647LL || p->n_snapshots > 2147483647LL)
        return fail(err, err_len, KIMI_KDA_ERR_SHAPE, "kimi_kda_forward_cuda: too many sequences/tokens for one launch");

    int64_t sq[4], sk[4], sv[4], sg[4], sb[4], ss[4];
    const struct { const kimi_kda_tensor * t; int64_t * s; int first; const char * name; } ts[] = {
        {&p->q, sq, 1, "q"}, {&p->k, sk, 1, "k"}, {&p->v, sv, 1, "v"},
        {&p->g, sg, 1, "g"}, {&p->state, ss, 1, "state"},
    };
    for (const auto & e : ts)
        if (!strides4(*e.t, e.first, e.s))
            return fail(err, err_len, KIMI_KDA_ERR_STRIDE,
                        "kimi_kda_forward_cuda: tensor %s: CUDA kernels need 16-byte aligned data and strides nb[1..3]", e.name);
    for (int d = 1; d < 4; ++d) {
        if (p->beta.nb[d] % sizeof(float) != 0)
            return fail(err, err_len, KIMI_KDA_ERR_STRIDE, "kimi_kda_forward_cuda: tensor beta: nb[%d] not a multiple of 4", d);
        sb[d] = (int64_t) (p->beta.nb[d] / sizeof(float));
    }
    if (((uintptr_t) p->dst % 16) != 0)
        return fail(err, err_len, KIMI_KDA_ERR_STRIDE, "kimi_kda_forward_cuda: dst must be 16-byte aligned");

    a->q = p->q.data; a->k = p->k.data; a->v = p->v.data; a->g = p->g.data; a->beta = p->beta.data;
    a->s_in = p->state.data;
    a->q1 = sq[1]; a->q2 = sq[2]; a->q3 = sq[3];
    a->k1 = sk[1]; a->k2 = sk[2]; a->k3 = sk[3];
    a->v1 = sv[1]; a->v2 = sv[2]; a->v3 = sv[3];
    a->g1 = sg[1]; a->g2 = sg[2]; a->g3 = sg[3];
    a->b1 = sb[1]; a->b2 = sb[2]; a->b3 = sb[3];
    a->s1 = ss[1]; a->s2 = ss[2]; a->s3 = ss[3];
    a->o = p->dst;
    a->s_out = p->dst + S * H * T * NS;
    a->slot_stride = S * S * H * NS;
    a->S = (int) S; a->H = (int) H; a->Hk = (int) p->q.ne[1]; a->n_seqs = (int) NS;
    a->rq3 = (int) (NS / p->q.ne[3]);
    a->T_total = (int) T;
    a->K = (int) p->n_snapshots;
    a->scale = 1.0f / sqrtf((float) S);
    return KIMI_KDA_OK;
}

} // namespace

extern "C" int kimi_kda_cuda_check(const kimi_kda_params * p, char * err, size_t err_len) {
    const int rc = kimi_kda_check(p, err, err_len);
    if (rc != KIMI_KDA_OK) return rc;
    Args a{};
    return make_args(p, &a, err, err_len);
}

extern "C" int kimi_kda_has_cuda(void) { return 1; }

extern "C" kimi_kda_algo kimi_kda_cuda_resolve_algo(const kimi_kda_params * p) {
    return p ? resolve(p) : KIMI_KDA_ALGO_RECURRENT;
}

extern "C" size_t kimi_kda_cuda_workspace_bytes(const kimi_kda_params * p) {
    if (!p || kimi_kda_check(p, nullptr, 0) != KIMI_KDA_OK || resolve(p) != KIMI_KDA_ALGO_CHUNKED) return 0;
    const int64_t S = p->v.ne[0], T = p->v.ne[2];
    const int64_t sg = segment_tokens(S, p->v.ne[1], p->v.ne[3]);
    const int64_t seg = T < sg ? T : sg;
    const size_t n16 = (size_t) (p->v.ne[3] * p->v.ne[1] * ((seg + CK_C - 1) / CK_C) * item_floats(S)) * sizeof(float);
    // enough for every math mode: the 16-bit modes at S = 128 use the 64-token layout
    const size_t n64 = S == C64_S ? ws_bytes64(p->v.ne[1], p->v.ne[3], T) : 0;
    return n16 > n64 ? n16 : n64;
}

extern "C" int kimi_kda_forward_cuda_ws(const kimi_kda_params * p, int math, void * workspace, size_t ws_bytes,
                                        void * stream, char * err, size_t err_len) {
    const int rc = kimi_kda_check(p, err, err_len);
    if (rc != KIMI_KDA_OK) return rc;
    bool fused = false;
    if (math == KIMI_KDA_CUDA_MATH_DEFAULT) {
        math = KIMI_KDA_CUDA_MATH_TF32X3;
    } else if (math >= 0 && (math & KIMI_KDA_CUDA_FUSED)) {
        fused = true;
        math &= ~KIMI_KDA_CUDA_FUSED;
    }
    if (math < KIMI_KDA_CUDA_MATH_FP32 || math > KIMI_KDA_CUDA_MATH_F16)
        return fail(err, err_len, KIMI_KDA_ERR_ARG, "kimi_kda_forward_cuda: math mode %d out of range", math);

    const int64_t S = p->v.ne[0], H = p->v.ne[1], T = p->v.ne[2], NS = p->v.ne[3];
    // 16-bit modes: the 64-token path at S = 128 (prep + state kernels); elsewhere (other S, or the
    // fused kernel asked for) the tf32 path, the nearest in accuracy
    const bool half16 = math == KIMI_KDA_CUDA_MATH_BF16 || math == KIMI_KDA_CUDA_MATH_F16;
    const bool c64 = half16 && S == C64_S && !fused;
    const bool use_f16 = math == KIMI_KDA_CUDA_MATH_F16;
    if (half16) math = KIMI_KDA_CUDA_MATH_TF32;
    Args a{};
    const int arc = make_args(p, &a, err, err_len);
    if (arc != KIMI_KDA_OK) return arc;

    cudaStream_t st = (cudaStream_t) stream;
    cudaError_t e = cudaSuccess;
    const kimi_kda_algo algo = resolve(p);
    // with K > 1 snapshots, the last min(K, T) tokens run token by token (each needs its state)
    const int64_t tail = a.K > 1 ? (a.K < T ? a.K : T) : 0;
    int64_t t_split = 0;
    if (algo == KIMI_KDA_ALGO_CHUNKED && T - tail > 0) {
        t_split = T - tail;
        Args c = a;
        c.t_begin = 0; c.t_end = (int) t_split;
        float * ws = (float *) workspace;
        bool own = false;
        const int64_t seg = c64 ? segment_tokens64(H, NS) : segment_tokens(S, H, NS);
        const size_t need = c64 ? ws_bytes64(H, NS, t_split)
                                : (size_t) (NS * H * (((t_split < seg ? t_split : seg) + CK_C - 1) / CK_C) * item_floats(S)) * sizeof(float);
        if (!fused && (ws == nullptr || ws_bytes < need)) {
            // stream-ordered scratch; if even that fails, the fused kernel needs none
            ws = nullptr;
            if (cudaMallocAsync((void **) &ws, need, st) == cudaSuccess) own = true;
            else { (void) cudaGetLastError(); ws = nullptr; }
        }
        if (fused || ws == nullptr) {
            switch (math) {
                case KIMI_KDA_CUDA_MATH_FP32:   e = launch_chunk_s<MATH_FP32>(c, st); break;
                case KIMI_KDA_CUDA_MATH_TF32X3: e = launch_chunk_s<MATH_TF32X3>(c, st); break;
                default:                        e = launch_chunk_s<MATH_TF32>(c, st); break;
            }
        } else {
            // v8: overlapped segments (64-token path), if asked for and the workspace holds 2 buffers
            bool done = false;
            const int ovl = env_int("KIMI_KDA_CUDA_OVL", OVL_SEGMENTS_DEFAULT);
            if (c64 && ovl >= 2 && !getenv("KIMI_KDA_CUDA_PROFILE")) {
                const int64_t chunks = (t_split + C64 - 1) / C64;
                const size_t per_chunk = (size_t) (NS * H) * Item64::size, cap = own ? need : ws_bytes;
                const int64_t max_sc = (int64_t) (cap / (2 * per_chunk));
                const std::vector<int64_t> plan = ovl_plan(chunks, ovl, env_int("KIMI_KDA_CUDA_OVL_HEAD", OVL_HEAD_DEFAULT),
                                                           env_int("KIMI_KDA_CUDA_OVL_TAIL", OVL_TAIL_DEFAULT), max_sc);
                if (!plan.empty()) {
                    int64_t bc = 0;
                    for (int64_t x : plan) bc = x > bc ? x : bc;
                    int nbuf = env_int("KIMI_KDA_CUDA_OVL_NBUF", OVL_NBUF_DEFAULT);
                    nbuf = nbuf < 2 ? 2 : (nbuf > OVL_NBUF_MAX ? OVL_NBUF_MAX : nbuf);
                    while (nbuf > 2 && (size_t) nbuf * bc * per_chunk > cap) --nbuf;
                    std::lock_guard<std::mutex> lock(ovl_mu);
                    OvlRes * r = ovl_get(env_int("KIMI_KDA_CUDA_OVL_PRIO", 1) != 0);
                    if (r) {
                        e = use_f16 ? launch_c64_overlap<__half>(c, (char *) ws, plan, bc, nbuf, t_split, r, st)
                                    : launch_c64_overlap<__nv_bfloat16>(c, (char *) ws, plan, bc, nbuf, t_split, r, st);
                        done = true;
                    }
                }
            }
            // segments of seg tokens: each starts from the state the previous one parked in slot 0
            for (int64_t b = 0; b < t_split && e == cudaSuccess && !done; b += seg) {
                Args sgm = c;
                sgm.t_begin = (int) b;
                sgm.t_end = (int) (b + seg < t_split ? b + seg : t_split);
                if (b > 0) { sgm.s_in = a.s_out; sgm.s1 = S; sgm.s2 = S * S; sgm.s3 = S * S * H; }
                if (c64) {
                    e = use_f16 ? launch_c64<__half>(sgm, (char *) ws, st) : launch_c64<__nv_bfloat16>(sgm, (char *) ws, st);
                    continue;
                }
                switch (math) {
                    case KIMI_KDA_CUDA_MATH_FP32:   e = launch_two_s<MATH_FP32>(sgm, ws, st); break;
                    case KIMI_KDA_CUDA_MATH_TF32X3: e = launch_two_s<MATH_TF32X3>(sgm, ws, st); break;
                    default:                        e = launch_two_s<MATH_TF32>(sgm, ws, st); break;
                }
            }
            if (own) {
                const cudaError_t e2 = cudaFreeAsync(ws, st);
                if (e == cudaSuccess) e = e2;
            }
        }
        if (e != cudaSuccess)
            return fail(err, err_len, KIMI_KDA_ERR_BACKEND, "kimi_kda_forward_cuda: chunk kernel launch: %s", cudaGetErrorString(e));
        if (t_split == T) return KIMI_KDA_OK;
        // the tail starts from the chunk kernel's state, parked in snapshot slot 0
        a.s_in = a.s_out;
        a.s1 = S; a.s2 = S * S; a.s3 = S * S * H;
    }
    a.t_begin = (int) t_split; a.t_end = (int) T;
    e = launch_recurrent(a, st);
    if (e != cudaSuccess)
        return fail(err, err_len, KIMI_KDA_ERR_BACKEND, "kimi_kda_forward_cuda: recurrent kernel launch: %s", cudaGetErrorString(e));
    return KIMI_KDA_OK;
}

extern "C" int kimi_kda_forward_cuda_ex(const kimi_kda_params * p, int math, void * stream, char * err, size_t err_len) {
    return kimi_kda_forward_cuda_ws(p, math, nullptr, 0, stream, err, err_len);
}

extern "C" int kimi_kda_forward_cuda(const kimi_kda_params * p, void * stream, char * err, size_t err_len) {
    return kimi_kda_forward_cuda_ws(p, KIMI_KDA_CUDA_MATH_DEFAULT, nullptr, 0, stream, err, err_len);
}
