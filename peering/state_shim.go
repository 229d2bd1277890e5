package peering

// TEMPORARY: the API of the node-state work landing from branch
// peering-state; replaced by it on merge.

// GroupState is one of a node's content groups as it advertises it.
type GroupState struct {
	Name  string
	Ready bool
}

// State is what a node advertises about itself besides readiness.
type State struct {
	Epoch  uint64
	Groups []GroupState
}

// EventState reports a peer's new State.
const EventState EventKind = 100

var shimState State

// SetState advertises s.
func (n *Node) SetState(s State) { shimState = s }

// State returns the advertised state.
func (n *Node) State() State { return shimState }
