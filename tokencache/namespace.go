package tokencache

// Namespace returns the namespace that names the cache's shared token
// (WithNamespace; DefaultNamespace when not given). Metrics label by it.
func (c *Cache) Namespace() string { return c.cfg.namespace }
