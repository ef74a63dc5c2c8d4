// allocation_tracker.c++ -- custom_alloc::AllocationTracker (configure
// --enable-tracking): the request's tracker, usable with any heap.
//
// It owns the records of the blocks its user reports, keyed by address, and
// per-stack totals; stacks come from track_capture (track-unwind.c++) and are
// symbolised by track.c++ only when a report is printed.  Unlike the process
// heap's tracker (track.c++) it is an ordinary C++ object called from user
// code, outside any allocator, so it keeps its data in standard containers,
// under one mutex.
#include <custom_alloc/allocation_tracker.h++>

#include <algorithm>
#include <cstdio>
#include <new>

#include "track.h++"

namespace custom_alloc {

namespace {
constexpr int kMaxDepth = 64;

}  // namespace

__attribute__((noinline)) std::vector<void*> AllocationTracker::capture_stack_trace(int max_depth) {
  void* frames[kMaxDepth];
  unsigned want = static_cast<unsigned>(std::clamp(max_depth, 0, kMaxDepth));
  // Frames above ours: track_allocation's, then its caller's -- the user's
  // allocating function comes first in the result.
  unsigned n = lca::track_capture(frames, want, 2);
  return std::vector<void*>(frames, frames + n);
}

AllocationTracker& AllocationTracker::global() {
  alignas(AllocationTracker) static unsigned char storage[sizeof(AllocationTracker)];
  static AllocationTracker* tracker = new (storage) AllocationTracker();  // never destroyed
  return *tracker;
}

std::string AllocationTracker::resolve_symbol(void* addr) { return symbol_name(addr); }

std::string AllocationTracker::symbol_name(void* addr) {
  char buf[1024];
  lca::track_symbolize(addr, buf, sizeof buf);
  return buf;
}

__attribute__((noinline)) void AllocationTracker::track_allocation(void* ptr, size_t size) {
  if (!ptr) return;
  auto start = std::chrono::steady_clock::now();
  AllocationInfo info{ptr, size, capture_stack_trace(), start, std::this_thread::get_id()};
  std::lock_guard<std::mutex> lock(tracker_mutex_);
  SiteTotals& site = sites_[info.stack_trace];
  ++site.count;
  site.bytes += size;
  ++total_allocations_;
  total_bytes_allocated_ += size;
  auto [it, inserted] = active_allocations_.insert_or_assign(ptr, std::move(info));
  (void)it;
  if (!inserted) ++untracked_frees_;  // the old block at ptr was freed unseen
  tracking_time_ += std::chrono::steady_clock::now() - start;
}

void AllocationTracker::track_deallocation(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(tracker_mutex_);
  if (active_allocations_.erase(ptr) == 0) ++untracked_frees_;
}

std::vector<AllocationTracker::AllocationInfo> AllocationTracker::get_leaks() const {
  std::vector<AllocationInfo> leaks;
  {
    std::lock_guard<std::mutex> lock(tracker_mutex_);
    leaks.reserve(active_allocations_.size());
    for (const auto& [ptr, info] : active_allocations_) leaks.push_back(info);
  }
  std::sort(leaks.begin(), leaks.end(), [](const AllocationInfo& a, const AllocationInfo& b) {
    if (a.size != b.size) return a.size > b.size;
    return a.timestamp < b.timestamp;
  });
  return leaks;
}

AllocationTracker::Profile AllocationTracker::generate_profile() const {
  Profile p{};
  std::lock_guard<std::mutex> lock(tracker_mutex_);
  for (const auto& [stack, totals] : sites_) {
    p.allocation_sites[stack] = totals.count;
    p.bytes_per_site[stack] = totals.bytes;
  }
  p.total_allocations = total_allocations_;
  p.total_bytes_allocated = total_bytes_allocated_;
  p.total_allocation_time = std::chrono::duration_cast<std::chrono::microseconds>(tracking_time_);
  p.live_allocations = active_allocations_.size();
  for (const auto& [ptr, info] : active_allocations_) p.live_bytes += info.size;
  p.untracked_frees = untracked_frees_;
  return p;
}

void AllocationTracker::print_report(std::ostream& out) const {
  struct Group {
    const std::vector<void*>* stack;
    std::size_t blocks = 0, bytes = 0;
  };
  std::map<std::vector<void*>, Group> groups;
  Profile profile = generate_profile();
  {
    std::lock_guard<std::mutex> lock(tracker_mutex_);
    for (const auto& [ptr, info] : active_allocations_) {
      Group& g = groups[info.stack_trace];
      ++g.blocks;
      g.bytes += info.size;
    }
  }
  std::vector<std::pair<const std::vector<void*>*, Group>> sorted;
  for (auto& [stack, g] : groups) sorted.push_back({&stack, g});
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    return a.second.bytes != b.second.bytes ? a.second.bytes > b.second.bytes : *a.first < *b.first;
  });
  auto print_stack = [&](const std::vector<void*>& stack) {
    for (std::size_t i = 0; i < stack.size(); ++i) {
      std::string name = symbol_name(stack[i]);
      char head[64];
      // An unknown function is "0xADDR (module+0xOFF)" already.
      if (name.compare(0, 2, "0x") == 0)
        std::snprintf(head, sizeof head, "    #%zu ", i);
      else
        std::snprintf(head, sizeof head, "    #%zu %p in ", i, stack[i]);
      out << head << name << '\n';
    }
    if (stack.empty()) out << "    [no stack]\n";
  };
  // Hot sites: the ten stacks with the most allocations.
  std::vector<std::pair<std::size_t, const std::vector<void*>*>> hot;
  for (const auto& [stack, count] : profile.allocation_sites) hot.push_back({count, &stack});
  std::sort(hot.begin(), hot.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : *a.second < *b.second;
  });
  {  // every address printed below, symbolised in one pass over each module
    std::vector<void*> all;
    for (const auto& [stack, g] : sorted) all.insert(all.end(), stack->begin(), stack->end());
    for (std::size_t i = 0; i < hot.size() && i < 10; ++i) all.insert(all.end(), hot[i].second->begin(), hot[i].second->end());
    lca::track_prepare_symbols(all.data(), all.size());
  }
  out << "AllocationTracker report\n";
  std::size_t leaked_blocks = 0, leaked_bytes = 0;
  for (const auto& [stack, g] : sorted) {
    out << g.bytes << " bytes in " << g.blocks << (g.blocks == 1 ? " block" : " blocks")
        << " leaked, allocated at:\n";
    print_stack(*stack);
    leaked_blocks += g.blocks;
    leaked_bytes += g.bytes;
  }
  out << "Hot allocation sites (" << profile.total_allocations
      << (profile.total_allocations == 1 ? " allocation, " : " allocations, ") << profile.total_bytes_allocated
      << " bytes, " << profile.total_allocation_time.count() << " us spent tracking):\n";
  for (std::size_t i = 0; i < hot.size() && i < 10; ++i) {
    out << "  " << hot[i].first << " allocations, " << profile.bytes_per_site[*hot[i].second] << " bytes at:\n";
    print_stack(*hot[i].second);
  }
  if (leaked_blocks == 0)
    out << "SUMMARY: no leaks (" << profile.total_allocations
        << (profile.total_allocations == 1 ? " allocation tracked)\n" : " allocations tracked)\n");
  else
    out << "SUMMARY: " << leaked_bytes << " bytes leaked in " << leaked_blocks
        << (leaked_blocks == 1 ? " block from " : " blocks from ") << sorted.size()
        << (sorted.size() == 1 ? " allocation stack\n" : " allocation stacks\n");
}

}  // namespace custom_alloc
