//go:build !race

package spread

const raceEnabled = false
