// MinHash signatures bit-identical to datasketch's (>= 2.0, scheme "affine32"): the UTF-8 bytes
// of each character n-gram are hashed with SHA-1 (the first four digest bytes read little-endian,
// datasketch's sha1_hash32), mixed with the MurmurHash3 finalizer, then put through every
// permutation a h + b mod 2^32. Same signatures, same LSH buckets: the estimates are datasketch's
// by construction; the speed is C++'s. Shingles are hashed 16 at a time, one per SIMD lane (a
// shingle is one SHA-1 block), the permutations run in one pass with the minima in cache, and
// documents are split across threads with the GIL released.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
// Lane vectors are passed only between inlined helpers of one clone, never across an ABI boundary.
#pragma GCC diagnostic ignored "-Wpsabi"
#define SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SIMD_CLONES
#endif

namespace py = pybind11;

namespace {

constexpr uint32_t kInit[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
constexpr uint32_t kRound[4] = {0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6};
constexpr int kLanes = 16;
constexpr int64_t kOneBlock = 55;  // the longest message whose padding fits one block

template <typename T>
inline T rol(const T &x, int s) {
  return (x << s) | (x >> (32 - s));
}

// The round function of round i (FIPS 180-4, 4.1.1), for scalars and lane vectors alike.
template <typename T>
inline T round_f(int i, const T &b, const T &c, const T &d) {
  if (i < 20) return (b & c) | (~b & d);
  if (i < 40 || i >= 60) return b ^ c ^ d;
  return (b & c) | (b & d) | (c & d);
}

// SHA-1 compression of one 64-byte block: ``w`` holds the block's 16 big-endian words (one
// scalar or one lane vector each) and becomes the message schedule in place.
template <typename T>
inline void compress(T h[5], T w[16]) {
  T a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
#pragma GCC unroll 80  // constant indices and round functions: the state stays in registers
  for (int i = 0; i < 80; ++i) {
    T &wi = w[i & 15];
    if (i >= 16) wi = rol(w[(i - 3) & 15] ^ w[(i - 8) & 15] ^ w[(i - 14) & 15] ^ wi, 1);
    const T t = rol(a, 5) + round_f(i, b, c, d) + e + kRound[i / 20] + wi;
    e = d, d = c, c = rol(b, 30), b = a, a = t;
  }
  h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

inline uint32_t load_be(const uint8_t *p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}

// The padded blocks of a message as words (FIPS 180-4, 5.1.1); returns how many blocks.
int64_t padded(const uint8_t *msg, int64_t len, std::vector<uint32_t> &words) {
  const int64_t blocks = (len + 9 + 63) / 64;
  std::vector<uint8_t> bytes(64 * blocks, 0);
  std::memcpy(bytes.data(), msg, len);
  bytes[len] = 0x80;
  const uint64_t bits = static_cast<uint64_t>(len) * 8;
  for (int i = 0; i < 8; ++i) bytes[64 * blocks - 1 - i] = static_cast<uint8_t>(bits >> (8 * i));
  words.resize(16 * blocks);
  for (int64_t i = 0; i < 16 * blocks; ++i) words[i] = load_be(bytes.data() + 4 * i);
  return blocks;
}

// The SHA-1 state after a message of any length, one scalar block at a time.
void sha1_state(const uint8_t *msg, int64_t len, uint32_t h[5]) {
  std::memcpy(h, kInit, sizeof kInit);
  std::vector<uint32_t> words;
  const int64_t blocks = padded(msg, len, words);
  for (int64_t k = 0; k < blocks; ++k) compress(h, words.data() + 16 * k);
}

inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6B;
  h ^= h >> 13;
  h *= 0xC2B2AE35;
  return h ^ (h >> 16);
}

// sha1_hash32 as datasketch reads it: the first digest word, byte-swapped.
inline uint32_t hash32(uint32_t h0) { return __builtin_bswap32(h0); }

typedef uint32_t Lanes __attribute__((vector_size(4 * kLanes)));

// The first SHA-1 word of up to kLanes one-block messages (``len <= kOneBlock``) at once.
SIMD_CLONES void first_words(const uint8_t *const *msgs, const int64_t *lens, int count,
                             uint32_t *out) {
  alignas(64) uint8_t blocks[kLanes][64] = {};
  for (int l = 0; l < count; ++l) {
    std::memcpy(blocks[l], msgs[l], lens[l]);
    blocks[l][lens[l]] = 0x80;
    const uint32_t bits = static_cast<uint32_t>(lens[l]) * 8;
    blocks[l][62] = static_cast<uint8_t>(bits >> 8), blocks[l][63] = static_cast<uint8_t>(bits);
  }
  alignas(64) uint32_t words[16][kLanes];  // transposed: word i of every lane, then i + 1
  for (int i = 0; i < 16; ++i)
    for (int l = 0; l < kLanes; ++l) words[i][l] = load_be(blocks[l] + 4 * i);
  Lanes w[16], h[5];
  std::memcpy(w, words, sizeof w);
  for (int i = 0; i < 5; ++i) h[i] = Lanes{} + kInit[i];
  compress(h, w);
  std::memcpy(words[0], &h[0], sizeof h[0]);
  std::copy(words[0], words[0] + count, out);
}

// sha1_hash32 of n messages: those of one block kLanes at a time, longer ones one by one.
void sha1_hash32_all(const uint8_t *const *msgs, const int64_t *lens, int64_t n, uint32_t *out) {
  const uint8_t *lane_msgs[kLanes];
  int64_t lane_lens[kLanes], where[kLanes];
  int pending = 0;
  auto flush = [&] {
    uint32_t words[kLanes];
    first_words(lane_msgs, lane_lens, pending, words);
    for (int l = 0; l < pending; ++l) out[where[l]] = hash32(words[l]);
    pending = 0;
  };
  for (int64_t k = 0; k < n; ++k) {
    if (lens[k] > kOneBlock) {
      uint32_t h[5];
      sha1_state(msgs[k], lens[k], h);
      out[k] = hash32(h[0]);
      continue;
    }
    lane_msgs[pending] = msgs[k], lane_lens[pending] = lens[k], where[pending++] = k;
    if (pending == kLanes) flush();
  }
  if (pending) flush();
}

// Reused buffers of one thread.
struct Scratch {
  std::vector<int64_t> starts, lens;
  std::vector<const uint8_t *> msgs;
  std::vector<uint32_t> hashes;
};

// The mixed hashes of one text's character n-grams (the whole text, if it has fewer code
// points), into ``s.hashes``.
void shingle_hashes(const uint8_t *text, int64_t len, int ngram, Scratch &s) {
  s.starts.clear();
  for (int64_t i = 0; i < len; ++i)
    if ((text[i] & 0xC0) != 0x80) s.starts.push_back(i);
  const int64_t chars = static_cast<int64_t>(s.starts.size());
  s.starts.push_back(len);
  const int64_t span = std::min<int64_t>(chars, ngram), count = chars - span + 1;
  s.msgs.resize(count), s.lens.resize(count), s.hashes.resize(count);
  for (int64_t k = 0; k < count; ++k)
    s.msgs[k] = text + s.starts[k], s.lens[k] = s.starts[k + span] - s.starts[k];
  sha1_hash32_all(s.msgs.data(), s.lens.data(), count, s.hashes.data());
  for (auto &h : s.hashes) h = fmix32(h);
}

// The minima of the permutations over one document's hashes.
SIMD_CLONES void doc_minima(const uint32_t *hv, int64_t count, const uint32_t *a,
                            const uint32_t *b, int64_t perms, uint32_t *mins) {
  std::fill(mins, mins + perms, std::numeric_limits<uint32_t>::max());
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t x = hv[i];
    for (int64_t k = 0; k < perms; ++k) {
      const uint32_t h = a[k] * x + b[k];
      mins[k] = h < mins[k] ? h : mins[k];
    }
  }
}

py::array_t<uint32_t> signatures(const py::array_t<uint8_t, py::array::c_style> &utf8,
                                 const py::array_t<int64_t, py::array::c_style> &offsets,
                                 int ngram, const py::array_t<uint32_t, py::array::c_style> &a,
                                 const py::array_t<uint32_t, py::array::c_style> &b,
                                 int threads) {
  const int64_t docs = offsets.shape(0) - 1;
  const int64_t perms = a.shape(0);
  if (b.shape(0) != perms) throw std::invalid_argument("a and b differ in length");
  if (ngram < 1) throw std::invalid_argument("ngram must be positive");
  py::array_t<uint32_t> out({docs, perms});
  const uint8_t *text = utf8.data();
  const int64_t *off = offsets.data();
  const uint32_t *pa = a.data(), *pb = b.data();
  uint32_t *po = out.mutable_data();
  auto work = [&](int64_t first, int64_t last) {
    Scratch s;
    for (int64_t d = first; d < last; ++d) {
      shingle_hashes(text + off[d], off[d + 1] - off[d], ngram, s);
      doc_minima(s.hashes.data(), static_cast<int64_t>(s.hashes.size()), pa, pb, perms,
                 po + d * perms);
    }
  };
  {
    py::gil_scoped_release release;
    threads = std::max(1, std::min<int>(threads, static_cast<int>(std::max<int64_t>(docs, 1))));
    // split by bytes so threads get equal work
    std::vector<int64_t> bounds{0};
    const int64_t total = off[docs];
    for (int t = 1; t < threads; ++t) {
      const int64_t target = total * t / threads;
      bounds.push_back(std::upper_bound(off, off + docs + 1, target) - off - 1);
    }
    bounds.push_back(docs);
    std::vector<std::thread> pool;
    for (int t = 0; t + 1 < static_cast<int>(bounds.size()); ++t)
      pool.emplace_back(work, bounds[t], std::max(bounds[t], bounds[t + 1]));
    for (auto &th : pool) th.join();
  }
  return out;
}

// sha1_hash32 of each message by the kernel's own routing, for the test against hashlib.
std::vector<uint32_t> sha1_hash32(const std::vector<std::string> &messages) {
  std::vector<const uint8_t *> msgs;
  std::vector<int64_t> lens;
  for (const auto &m : messages)
    msgs.push_back(reinterpret_cast<const uint8_t *>(m.data())),
        lens.push_back(static_cast<int64_t>(m.size()));
  std::vector<uint32_t> out(messages.size());
  sha1_hash32_all(msgs.data(), lens.data(), static_cast<int64_t>(msgs.size()), out.data());
  return out;
}

}  // namespace

PYBIND11_MODULE(_minhash, m) {
  m.doc() = "MinHash signatures of character n-grams, bit-identical to datasketch's affine32";
  m.def("signatures", &signatures, py::arg("utf8"), py::arg("offsets"), py::arg("ngram"),
        py::arg("a"), py::arg("b"), py::arg("threads") = 1);
  m.def("sha1_hash32", &sha1_hash32, py::arg("messages"));
}
