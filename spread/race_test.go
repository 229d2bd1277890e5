//go:build race

package spread

// raceEnabled: the race detector slows the simulation tenfold.
const raceEnabled = true
