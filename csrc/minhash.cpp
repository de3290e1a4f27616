// MinHash signatures: for each document, the minimum of ``num_perm`` multiply-shift hashes over
// its shingle hashes. Each shingle hash is first put through a 64-bit mixer (SplitMix64's
// finalizer): the rolling n-gram hash is linear in the characters, and so are the permutations,
// so without it the n-grams of similar texts map to correlated minima and Jaccard is
// overestimated. One pass over the shingles with the running minima kept in cache, the GIL
// released and documents split across threads.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The 32-bit halves of a permutation ``h(x) = (a x + b) mod 2^64 >> 32``.
struct Halves {
  std::vector<uint32_t> al, ah, bl, bh;
};

// The minima of one document's shingles. ``h(x)`` is computed from 32-bit halves (exactly:
// ``(al xl + bl) >> 32`` carries into ``ah xl + al xh + bh`` mod 2^32), which vectorises where
// 64-bit products do not; AVX2 is chosen at run time where the CPU has it.
__attribute__((target_clones("avx2", "default"))) void doc_minima(
    const uint64_t *sh, int64_t count, const Halves &p, int64_t perms, uint32_t *mins) {
  std::fill(mins, mins + perms, std::numeric_limits<uint32_t>::max());
  const uint32_t *al = p.al.data(), *ah = p.ah.data(), *bl = p.bl.data(), *bh = p.bh.data();
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t x = mix64(sh[i]);
    const uint32_t xl = static_cast<uint32_t>(x), xh = static_cast<uint32_t>(x >> 32);
    for (int64_t k = 0; k < perms; ++k) {
      const uint64_t low = static_cast<uint64_t>(al[k]) * xl + bl[k];
      const uint32_t h = static_cast<uint32_t>(low >> 32) + ah[k] * xl + al[k] * xh + bh[k];
      mins[k] = h < mins[k] ? h : mins[k];
    }
  }
}

py::array_t<uint32_t> signatures(const py::array_t<uint64_t, py::array::c_style> &shingles,
                                 const py::array_t<int64_t, py::array::c_style> &offsets,
                                 const py::array_t<uint64_t, py::array::c_style> &a,
                                 const py::array_t<uint64_t, py::array::c_style> &b,
                                 int threads) {
  const int64_t docs = offsets.shape(0) - 1;
  const int64_t perms = a.shape(0);
  py::array_t<uint32_t> out({docs, perms});
  const uint64_t *sh = shingles.data();
  const int64_t *off = offsets.data();
  Halves halves;
  for (int64_t k = 0; k < perms; ++k) {
    halves.al.push_back(static_cast<uint32_t>(a.data()[k]));
    halves.ah.push_back(static_cast<uint32_t>(a.data()[k] >> 32));
    halves.bl.push_back(static_cast<uint32_t>(b.data()[k]));
    halves.bh.push_back(static_cast<uint32_t>(b.data()[k] >> 32));
  }
  uint32_t *po = out.mutable_data();
  auto work = [&](int64_t first, int64_t last) {
    for (int64_t d = first; d < last; ++d)
      doc_minima(sh + off[d], off[d + 1] - off[d], halves, perms, po + d * perms);
  };
  {
    py::gil_scoped_release release;
    threads = std::max(1, std::min<int>(threads, static_cast<int>(std::max<int64_t>(docs, 1))));
    // split by shingle count so threads get equal work
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

}  // namespace

PYBIND11_MODULE(_minhash, m) {
  m.doc() = "MinHash signatures over precomputed shingle hashes";
  m.def("signatures", &signatures, py::arg("shingles"), py::arg("offsets"), py::arg("a"),
        py::arg("b"), py::arg("threads") = 1);
}
