#include "engine/tokenizer/bpe.h"

#include <algorithm>

#include "engine/tokenizer/utf8.h"

namespace asl::tok {
namespace {

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct ByteTables {
  std::array<std::string, 256> byte_to_unicode;
  std::unordered_map<char32_t, uint8_t> unicode_to_byte;
  ByteTables() {
    // Printable bytes stand for themselves; the rest take code points 256, 257, ... in byte order.
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      AppendUtf8(cp, &byte_to_unicode[b]);
      unicode_to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

const std::array<std::string, 256>& ByteToUnicode() { return Tables().byte_to_unicode; }

std::optional<std::string> ByteLevelDecode(std::string_view token) {
  if (!IsValidUtf8(token)) return std::nullopt;
  const auto& map = Tables().unicode_to_byte;
  std::string out;
  out.reserve(token.size());
  size_t i = 0;
  while (i < token.size()) {
    auto it = map.find(NextCodePoint(token, &i));
    if (it == map.end()) return std::nullopt;
    out.push_back(static_cast<char>(it->second));
  }
  return out;
}

StatusOr<BpeModel> BpeModel::Create(const std::vector<std::string>& tokens, const std::vector<std::string>& merges,
                                    bool ignore_merges) {
  BpeModel m;
  m.ignore_merges_ = ignore_merges;
  m.vocab_.reserve(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (!tokens[id].empty()) m.vocab_[tokens[id]] = static_cast<int32_t>(id);  // last wins; "" is an unused id
  }
  const auto& b2u = ByteToUnicode();
  for (int b = 0; b < 256; ++b) {
    auto it = m.vocab_.find(b2u[b]);
    m.byte_id_[b] = it == m.vocab_.end() ? -1 : it->second;
  }
  m.merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& line = merges[rank];
    size_t sep = line.find(' ');
    if (sep == std::string::npos) sep = line.find('\0');
    if (sep == std::string::npos) return DataLoss("tokenizer merges[" + std::to_string(rank) + "]: no separator in '" + line + "'");
    const std::string left = line.substr(0, sep), right = line.substr(sep + 1);
    auto l = m.vocab_.find(left), r = m.vocab_.find(right), merged = m.vocab_.find(left + right);
    if (l == m.vocab_.end() || r == m.vocab_.end() || merged == m.vocab_.end()) {
      return DataLoss("tokenizer merges[" + std::to_string(rank) + "] '" + line + "': a part or the result is not in the vocabulary");
    }
    // A repeated pair keeps its first (lowest) rank, as in Hugging Face's MergeMap.
    m.merges_.try_emplace(PairKey(l->second, r->second), MergeValue{static_cast<int32_t>(rank), merged->second});
  }
  return m;
}

std::optional<int32_t> BpeModel::Find(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::EncodePiece(std::string_view piece, BpeScratch* s, std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    const auto& b2u = ByteToUnicode();
    s->mapped.clear();
    for (unsigned char c : piece) s->mapped += b2u[c];
    auto it = vocab_.find(s->mapped);
    if (it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  auto& sym = s->symbols;
  sym.clear();
  for (unsigned char c : piece) {
    const int32_t id = byte_id_[c];
    if (id < 0) continue;
    const auto n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, n + 1, true});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  auto less = [](const BpeScratch::Merge& a, const BpeScratch::Merge& b) {  // heap top = lowest rank, then pos
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto& heap = s->heap;
  heap.clear();
  auto push_pair = [&](int32_t pos) {
    const int32_t nxt = sym[pos].next;
    if (nxt < 0) return;
    auto it = merges_.find(PairKey(sym[pos].id, sym[nxt].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, it->second.new_id});
    std::push_heap(heap.begin(), heap.end(), less);
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) push_pair(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), less);
    const BpeScratch::Merge top = heap.back();
    heap.pop_back();
    BpeScratch::Symbol& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    // Stale entry: the pair at pos changed since it was queued.
    auto it = merges_.find(PairKey(cur.id, sym[cur.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    const int32_t right = cur.next;
    cur.id = top.new_id;
    sym[right].alive = false;
    cur.next = sym[right].next;
    if (cur.next >= 0) sym[cur.next].prev = top.pos;
    if (cur.prev >= 0) push_pair(cur.prev);
    push_pair(top.pos);
  }
  for (const auto& x : sym) {
    if (x.alive) out->push_back(x.id);
  }
}

}  // namespace asl::tok
