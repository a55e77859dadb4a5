// Package docs holds tests that keep the documentation and the repository's
// layout honest: the README's quick start must compile as written against
// the library alone; the README, the examples, docker-compose.yml and the
// Kubernetes CronJob must all name the same token (namespace); every go
// command the documentation and CI show must work from the repository
// root, the repository-wide ones reaching every module of the workspace;
// and a program that imports the library must not get the commands'
// dependencies in its module graph.
package docs
