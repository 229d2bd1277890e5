package integration

import "strings"

// The store (shard/) logs through the logger named "shardcache" (see
// module.go); these recognise its messages.

func isStoreLog(e logEntry) bool {
	return strings.HasPrefix(e.str("logger"), "shardcache")
}

// isPrimingStart recognises the line that starts a store's priming.
func isPrimingStart(e logEntry) bool {
	return isStoreLog(e) && e.str("msg") == "priming"
}

// isPrimingProgress recognises a progress line during priming.
func isPrimingProgress(e logEntry) bool {
	return isStoreLog(e) && e.str("msg") == "priming progress"
}

// isPrimed recognises the line that ends a store's priming.
func isPrimed(e logEntry) bool {
	return isStoreLog(e) && e.str("msg") == "primed"
}

// isBudgetWarning recognises the warning that the root does not fit in the
// memory budget.
func isBudgetWarning(e logEntry) bool {
	return isStoreLog(e) && e.str("level") == "warn" && strings.Contains(e.str("msg"), "budget")
}
