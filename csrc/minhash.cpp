// MinHash signatures: for each document, the minimum of ``num_perm`` multiply-shift hashes over
// its shingle hashes. One pass over the shingles with the running minima kept in cache, the GIL
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
  const uint64_t *pa = a.data();
  const uint64_t *pb = b.data();
  uint32_t *po = out.mutable_data();
  auto work = [&](int64_t first, int64_t last) {
    std::vector<uint32_t> mins(perms);
    for (int64_t d = first; d < last; ++d) {
      std::fill(mins.begin(), mins.end(), std::numeric_limits<uint32_t>::max());
      for (int64_t i = off[d]; i < off[d + 1]; ++i) {
        const uint64_t x = sh[i];
        for (int64_t p = 0; p < perms; ++p) {
          const uint32_t h = static_cast<uint32_t>((x * pa[p] + pb[p]) >> 32);
          mins[p] = h < mins[p] ? h : mins[p];
        }
      }
      std::copy(mins.begin(), mins.end(), po + d * perms);
    }
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
