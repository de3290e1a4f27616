// Dataset index builders for Megatron-Core's GPTDataset and BlendedDataset.
//
// Same semantics and outputs as megatron.core.datasets.helpers_cpp (tests compare them on random
// inputs); written to release the GIL, allocate straight into NumPy arrays, and keep the blending
// loops over plain contiguous buffers.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace {

// Index of the dataset whose achieved sample count lags its target the most; ties go to the lowest
// index. ``active`` lists the candidates in increasing order.
inline int64_t most_behind(const double *weights, const int64_t *counts, const int32_t *active,
                           int64_t n_active, double position) {
  int64_t best = active[0];
  double best_error = weights[best] * position - static_cast<double>(counts[best]);
  for (int64_t k = 1; k < n_active; ++k) {
    const int64_t d = active[k];
    const double error = weights[d] * position - static_cast<double>(counts[d]);
    if (error > best_error) {
      best_error = error;
      best = d;
    }
  }
  return best;
}

void build_blending_indices(py::array_t<int16_t> &dataset_index,
                            py::array_t<int64_t> &dataset_sample_index,
                            const py::array_t<double> &weights, const int32_t num_datasets,
                            const int64_t size, const bool verbose) {
  if (num_datasets <= 0) throw std::invalid_argument("num_datasets must be positive");
  auto out_dataset = dataset_index.mutable_unchecked<1>();
  auto out_sample = dataset_sample_index.mutable_unchecked<1>();
  const double *w = weights.data();
  std::vector<int64_t> counts(num_datasets, 0);
  std::vector<double> achieved(num_datasets, 0.0);  // counts as doubles: no conversion per step
  {
    py::gil_scoped_release release;
    int16_t *od = out_dataset.mutable_data(0);
    int64_t *os = out_sample.mutable_data(0);
    for (int64_t s = 0; s < size; ++s) {
      const double position = std::max(static_cast<double>(s), 1.0);
      int32_t best = 0;
      double best_error = w[0] * position - achieved[0];
      for (int32_t d = 1; d < num_datasets; ++d) {  // branch-free argmax, first max wins
        const double error = w[d] * position - achieved[d];
        const bool better = error > best_error;
        best_error = better ? error : best_error;
        best = better ? d : best;
      }
      od[s] = static_cast<int16_t>(best);
      os[s] = counts[best]++;
      achieved[best] += 1.0;
    }
  }
  if (verbose) {
    py::print("> blending indices built; achieved sample ratios:");
    for (int32_t i = 0; i < num_datasets; ++i)
      py::print("   dataset", i, "weight", w[i], "achieved",
                size ? static_cast<double>(counts[i]) / static_cast<double>(size) : 0.0);
  }
}

void build_exhaustive_blending_indices(py::array_t<int16_t> &dataset_index,
                                       py::array_t<int64_t> &dataset_sample_index,
                                       const py::array_t<int64_t> &sizes,
                                       const int32_t num_datasets) {
  auto out_dataset = dataset_index.mutable_unchecked<1>();
  auto out_sample = dataset_sample_index.mutable_unchecked<1>();
  const int64_t *sz = sizes.data();
  py::gil_scoped_release release;
  int64_t total = 0;
  for (int32_t i = 0; i < num_datasets; ++i) total += sz[i];
  std::vector<double> w(num_datasets);
  for (int32_t i = 0; i < num_datasets; ++i) w[i] = sz[i] / static_cast<double>(total);
  std::vector<int64_t> counts(num_datasets, 0);
  std::vector<int32_t> active;  // datasets with samples left, in increasing order
  for (int32_t i = 0; i < num_datasets; ++i)
    if (sz[i] > 0) active.push_back(i);
  int64_t s = 0;
  while (!active.empty()) {
    const double position = std::max(static_cast<double>(s), 1.0);
    const int64_t d = most_behind(w.data(), counts.data(), active.data(),
                                  static_cast<int64_t>(active.size()), position);
    out_dataset(s) = static_cast<int16_t>(d);
    out_sample(s) = counts[d]++;
    if (counts[d] == sz[d]) active.erase(std::find(active.begin(), active.end(), d));
    ++s;
  }
}

// Start (document position, offset) of every fixed-length sample over the epoch-concatenated,
// shuffled documents. Each sample spans seq_length + extra tokens; consecutive samples overlap by
// ``extra`` tokens (the label shift).
template <typename T>
py::array_t<T> build_sample_idx(const py::array_t<int32_t> &sizes_,
                                const py::array_t<int32_t> &document_idx_, const int32_t seq_length,
                                const int32_t num_epochs, const int64_t tokens_per_epoch,
                                const bool drop_last_partial_sequence = true,
                                const int add_extra_token_to_sequence = 1) {
  if (seq_length <= 1 || num_epochs <= 0 || tokens_per_epoch <= 1)
    throw std::invalid_argument("build_sample_idx: need seq_length > 1, epochs > 0, tokens > 1");
  const int64_t extra = add_extra_token_to_sequence;
  const int64_t usable = static_cast<int64_t>(num_epochs) * tokens_per_epoch - extra;
  const int64_t num_samples =
      drop_last_partial_sequence
          ? usable / seq_length
          : static_cast<int64_t>(std::ceil(static_cast<float>(usable) / seq_length));
  py::array_t<T> result({num_samples + 1, static_cast<int64_t>(2)});
  T *out = result.mutable_data();
  const int32_t *sizes = sizes_.data();
  const int32_t *docs = document_idx_.data();
  const int64_t last_doc = document_idx_.shape(0) - 1;
  {
    py::gil_scoped_release release;
    int64_t doc = 0;     // position in document_idx
    int64_t offset = 0;  // tokens of docs[doc] already consumed
    out[0] = 0;
    out[1] = 0;
    for (int64_t sample = 1; sample <= num_samples; ++sample) {
      int64_t need = seq_length + extra;
      while (need != 0) {
        const int64_t available = sizes[docs[doc]] - offset;
        if (available >= need) {
          // the sample ends inside this document; the next one restarts ``extra`` tokens earlier
          offset += need - extra;
          need = 0;
        } else if (doc == last_doc) {
          offset = sizes[docs[doc]] - extra;
          need = 0;
        } else {
          need -= available;
          ++doc;
          offset = 0;
        }
      }
      out[2 * sample] = static_cast<T>(doc);
      out[2 * sample + 1] = static_cast<T>(offset);
    }
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_helpers, m) {
  m.doc() = "Dataset index builders (sample index, blending) for Megatron-Core datasets";
  m.def("build_sample_idx_int32", &build_sample_idx<int32_t>);
  m.def("build_sample_idx_int64", &build_sample_idx<int64_t>);
  m.def("build_blending_indices", &build_blending_indices);
  m.def("build_exhaustive_blending_indices", &build_exhaustive_blending_indices);
}
