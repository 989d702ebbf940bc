// Package packaging holds the files for installing meshd as a service
// (meshd.service for systemd). It has no code; its tests keep the unit
// valid and in step with meshd's configuration defaults.
package packaging
