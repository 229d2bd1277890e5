package shard

// Push stores a copy another node's owner had this node fetch because a
// content director is about to send it requests for it (a spread path):
// the director's word stands in for the requests this node has not seen
// yet, so it is kept without the frequency test of Admit. It still counts
// against the budget: the least recently used copies are evicted to make
// room, and a copy larger than half the budget is refused, so that pushes
// cannot empty the cache for one item. A copy of another version of the
// same path is replaced. It reports whether the copy is held. it must hold
// its body.
func (h *Hot) Push(it *Item) bool {
	c := cost(it)
	if c > h.budget/2 || !it.Resident() {
		h.rejects.Add(1)
		return false
	}
	// Seen twice: as warm as an item admitted after two requests, so that
	// a colder candidate of Admit cannot displace it.
	h.freq.add(it.Path)
	h.freq.add(it.Path)

	h.mu.Lock()
	defer h.mu.Unlock()
	if el, ok := h.items[it.Path]; ok {
		if SameVersion(el.Value.(*hotEntry).it, it) {
			h.ll.MoveToFront(el)
			return true
		}
		h.removeLocked(el)
	}
	for h.bytes+c > h.budget {
		el := h.ll.Back()
		if el == nil {
			break
		}
		h.removeLocked(el)
		h.evicts.Add(1)
	}
	h.items[it.Path] = h.ll.PushFront(&hotEntry{it: it, cost: c})
	h.bytes += c
	h.pushes.Add(1)
	return true
}

// Pushes is the number of copies Push stored.
func (h *Hot) Pushes() int64 { return h.pushes.Load() }
