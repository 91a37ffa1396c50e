package agent_policy

# Cocoon's agent policy rules. `cocoon policy generate` appends the pod's
# `policy_data` (genpolicy's layout: containers, common, sandbox,
# request_defaults). Each rule is named after the agent request it decides;
# `reasons.<Rule>` says which field failed when it refuses.

import rego.v1

# Calls that change nothing the pod's owner pinned.
default StartContainerRequest := true
default WaitProcessRequest := true
default RemoveContainerRequest := true
default StatsContainerRequest := true
default DestroySandboxRequest := true
default GuestDetailsRequest := true
default GetOOMEventRequest := true
default TtyWinResizeRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default AgentStatsRequest := true

# Closing a container's input only ends it. A container whose pod spec
# opens no stdin reads end-of-file, as under runc: the runtime closes the
# input nobody writes, and a refusal would leave its reads blocked.
default CloseStdinRequest := true

# Calls that need the policy's consent.
default CreateSandboxRequest := false
default CreateContainerRequest := false
default PullImageRequest := false
default ExecProcessRequest := false
default SignalProcessRequest := false
default ReadStreamRequest := false
default WriteStreamRequest := false
default CopyFileRequest := false
default SetPolicyRequest := false
default GetMetricsRequest := false
default UpdateEphemeralMountsRequest := false
default ForwardLoopbackRequest := false
default RemoveStaleVirtiofsShareMountsRequest := false
default MemHotplugByProbeRequest := false
default SetGuestDateTimeRequest := false
default ReseedRandomDevRequest := false
default ResumeContainerRequest := false
default PauseContainerRequest := false
default UpdateContainerRequest := false
default OnlineCPUMemRequest := false
default AddARPNeighborsRequest := false

CreateSandboxRequest if {
	count(input.storages) == 0
	count(input.kernel_modules) == 0
}

# ---- SignalProcessRequest --------------------------------------------------

# Only the signals that stop a container (SIGTERM, SIGKILL and the image's
# STOPSIGNAL): another could make the workload act (reload, dump).
stop_signals := s if {
	i := data.pstate[input.container_id]
	s := policy_data.containers[i].stop_signals
	is_array(s)
} else := [9, 15]

SignalProcessRequest if input.signal in stop_signals

reasons.SignalProcessRequest contains msg if {
	not input.signal in stop_signals
	msg := sprintf("signal: %v is not one that stops the container (%v)", [input.signal, stop_signals])
}

# ---- CreateContainerRequest ------------------------------------------------

# The container this request claims to be: the pause container, or the one
# of the pod spec named by the CRI annotation.
sandbox_request if annotations["io.kubernetes.cri.container-type"] == "sandbox"

candidates contains i if {
	sandbox_request
	some i, c in policy_data.containers
	c.sandbox
}

candidates contains i if {
	not sandbox_request
	name := object.get(annotations, "io.kubernetes.cri.container-name", "")
	some i, c in policy_data.containers
	not c.sandbox
	c.name == name
}

process := p if {
	p := input.OCI.Process
	is_object(p)
}

linux := l if {
	l := input.OCI.Linux
	is_object(l)
} else := {}

annotations := a if {
	a := input.OCI.Annotations
	is_object(a)
} else := {}

input_uid := u if {
	u := process.User.UID
} else := 0

gid_of(p) := g if {
	g := p.User.GID
	is_number(g)
} else := 0

groups_of(p) := g if {
	g := p.User.AdditionalGids
	is_array(g)
} else := []

# The group: pinned where the pod spec says it (runAsGroup); the
# supplementary groups: only the group itself and the pod spec's.
gid_ok(p, c) if object.get(c.OCI.Process.User, "GID", null) == null

gid_ok(p, c) if gid_of(p) == c.OCI.Process.User.GID

group_allowed(g, p, _) if g == gid_of(p)

group_allowed(g, _, c) if g in object.get(c.OCI.Process.User, "AdditionalGids", [])

groups_ok(p, c) if {
	every g in groups_of(p) {
		group_allowed(g, p, c)
	}
}

caps_of(p, set) := v if {
	v := p.Capabilities[set]
	is_array(v)
} else := []

cap_sets := ["Ambient", "Bounding", "Effective", "Inheritable", "Permitted"]

restrictive_options := {"ro", "nosuid", "noexec", "nodev"}

# Every check is written to allow: a field that is missing or of another
# type fails it. The reasons further down only explain a refusal.
CreateContainerRequest := {"allowed": true, "ops": ops} if {
	is_object(process)
	not data.pstate[input.container_id]
	env_names_unique
	some i in candidates
	c := policy_data.containers[i]
	args_ok(c)
	env_ok(c)
	cwd_ok(c)
	user_ok(c)
	gid_ok(process, c)
	groups_ok(process, c)
	caps_ok(process, c)
	mounts_ok(c)
	devices_ok
	namespaces_ok(c)
	pidns_ok(c)
	paths_ok(c)
	sysctls_ok(c)
	annotations_ok(c)
	storages_ok(c)
	privileges_ok(c)
	ops := [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": i}]
}

args_ok(c) if c.sandbox

args_ok(c) if {
	not c.sandbox
	process.Args == c.OCI.Process.Args
}

env_allowed(e, c) if e in c.OCI.Process.Env

env_allowed(e, _) if {
	some r in policy_data.request_defaults.CreateContainerRequest.allow_env_regex
	regex.match(r, e)
}

env_allowed(e, c) if {
	some r in object.get(c, "env_regex", [])
	regex.match(r, e)
}

# Each variable once: a later duplicate would override a pinned value.
env_names_unique if {
	names := [split(e, "=")[0] | some e in process.Env]
	count(names) == count({n | some n in names})
}

env_ok(c) if c.sandbox

env_ok(c) if {
	not c.sandbox
	every e in process.Env {
		env_allowed(e, c)
	}
	every e in c.OCI.Process.Env {
		e in process.Env
	}
	every r in object.get(c, "env_regex", []) {
		env_named(r)
	}
}

# A variable whose value is known only when the pod runs is still there.
env_named(r) if {
	some e in process.Env
	regex.match(r, e)
}

cwd_ok(c) if c.sandbox

cwd_ok(c) if {
	not c.sandbox
	process.Cwd == c.OCI.Process.Cwd
}

user_ok(c) if c.OCI.Process.User.UID == null

user_ok(c) if input_uid == c.OCI.Process.User.UID

caps_ok(p, c) if {
	# Unset capabilities would leave the process the agent's own.
	is_object(p.Capabilities)
	every set in cap_sets {
		every cap in caps_of(p, set) {
			cap in c.OCI.Process.Capabilities[set]
		}
	}
}

mount_allowed(m, c) if {
	some p in c.OCI.Mounts
	p.destination == m.destination
	p.type_ == m.type_
	p.source == m.source
	every o in p.options {
		o in restrictive_options
		o in m.options
		not loosening[o] in m.options
	}
}

# The option that would undo a restrictive one later in the list.
loosening := {"ro": "rw", "nosuid": "suid", "noexec": "exec", "nodev": "dev"}

mounts_ok(c) if {
	every m in input.OCI.Mounts {
		mount_allowed(m, c)
	}
}

devices_ok if {
	count(input.devices) == 0
	count(object.get(linux, "Devices", [])) == 0
}

input_namespaces := {n.Type | some n in object.get(linux, "Namespaces", [])}

namespaces_ok(c) if {
	every ns in c.OCI.Linux.Namespaces {
		ns.Type in input_namespaces
	}
}

# Whether the container joins its pod's process namespace (and sees the
# other containers' processes) is the pod spec's to say.
pidns_ok(c) if object.get(input, "sandbox_pidns", false) == object.get(c, "sandbox_pidns", false)

paths_ok(c) if {
	every p in c.OCI.Linux.MaskedPaths {
		p in object.get(linux, "MaskedPaths", [])
	}
	every p in c.OCI.Linux.ReadonlyPaths {
		p in object.get(linux, "ReadonlyPaths", [])
	}
}

# Sysctls: the pod spec's, on its sandbox (where the runtime puts them), and
# there also the runtime's own for every pod (containerd's unprivileged
# ports and ICMP) where the pod spec does not set that one.
sysctls_ok(c) if {
	every k, v in object.get(linux, "Sysctl", {}) {
		sysctl_allowed(k, v, c)
	}
}

pod_sysctls(c) := object.get(c.OCI.Linux, "Sysctl", {})

sysctl_allowed(k, v, c) if object.get(pod_sysctls(c), k, null) == v

sysctl_allowed(k, v, c) if {
	c.sandbox
	object.get(pod_sysctls(c), k, null) == null
	defaults := object.get(policy_data.request_defaults.CreateContainerRequest, "allow_sysctls", {})
	object.get(defaults, k, null) == v
}

annotations_ok(c) if {
	every key, pattern in c.OCI.Annotations {
		regex.match(pattern, object.get(annotations, key, ""))
	}
}

storages_ok(c) if {
	c.sandbox
	count(input.storages) == 0
}

storages_ok(c) if {
	not c.sandbox
	count(input.storages) == 1
	guest_pull_of(input.storages[0], c)
}

guest_pull_of(s, c) if {
	s.driver == "image_guest_pull"
	s.source == c.image
}

guest_pull_of(s, c) if {
	s.driver == "image_guest_pull"
	s.source == ""
	annotations["io.kubernetes.cri.image-name"] == c.image
}

privileges_ok(c) if not c.OCI.Process.NoNewPrivileges

privileges_ok(_) if process.NoNewPrivileges == true

# Why CreateContainerRequest refused.
reasons.CreateContainerRequest contains "OCI.Process: the request has no process" if {
	not is_object(process)
}

reasons.CreateContainerRequest contains msg if {
	data.pstate[input.container_id]
	msg := sprintf("container_id: %s was already created under this policy", [input.container_id])
}

reasons.CreateContainerRequest contains "OCI.Process.Env: a variable is set twice" if {
	is_object(process)
	not env_names_unique
}

reasons.CreateContainerRequest contains "OCI.Process.Capabilities: unset (the process would keep every capability)" if {
	is_object(process)
	not is_object(process.Capabilities)
}

reasons.CreateContainerRequest contains msg if {
	count(candidates) == 0
	msg := sprintf(
		"OCI.Annotations[io.kubernetes.cri.container-name]: %q is not a container of the pod spec",
		[object.get(annotations, "io.kubernetes.cri.container-name", "")],
	)
}

reasons.CreateContainerRequest contains msg if {
	some i in candidates
	some msg in failures(policy_data.containers[i])
}

failures(c) := ((((((((((((((((({msg |
	not args_ok(c)
	msg := sprintf("OCI.Process.Args: %v is not the pod spec's %v", [object.get(process, "Args", null), c.OCI.Process.Args])
} | {msg |
	not c.sandbox
	some e in object.get(process, "Env", [])
	not env_allowed(e, c)
	msg := sprintf("OCI.Process.Env: %s is not in the pod spec (or has another value)", [split(e, "=")[0]])
}) | {msg |
	not c.sandbox
	some e in c.OCI.Process.Env
	not e in object.get(process, "Env", [])
	msg := sprintf("OCI.Process.Env: %s is missing (the pod spec sets it)", [split(e, "=")[0]])
}) | {msg |
	not c.sandbox
	some r in object.get(c, "env_regex", [])
	not env_named(r)
	msg := sprintf("OCI.Process.Env: no variable matches %s (the pod spec sets it)", [r])
}) | {msg |
	not gid_ok(process, c)
	msg := sprintf("OCI.Process.User.GID: %v is not the pod spec's %v", [gid_of(process), c.OCI.Process.User.GID])
}) | {msg |
	some g in groups_of(process)
	not group_allowed(g, process, c)
	msg := sprintf("OCI.Process.User.AdditionalGids: %v is not a group of the pod spec", [g])
}) | {msg |
	not cwd_ok(c)
	msg := sprintf("OCI.Process.Cwd: %v is not the pod spec's %q", [object.get(process, "Cwd", null), c.OCI.Process.Cwd])
}) | {msg |
	not user_ok(c)
	msg := sprintf("OCI.Process.User.UID: %v is not the pod spec's %v", [input_uid, c.OCI.Process.User.UID])
}) | {msg |
	some set in cap_sets
	some cap in caps_of(process, set)
	not cap in c.OCI.Process.Capabilities[set]
	msg := sprintf("OCI.Process.Capabilities.%s: %s is beyond the pod spec's", [set, cap])
}) | {msg |
	some m in input.OCI.Mounts
	not mount_allowed(m, c)
	msg := sprintf("OCI.Mounts: %s (%s from %s, options %v) is not a mount of the pod spec", [m.destination, m.type_, m.source, m.options])
}) | {msg |
	not devices_ok
	msg := "devices: the pod spec gives the container no devices"
}) | {msg |
	some ns in c.OCI.Linux.Namespaces
	not ns.Type in input_namespaces
	msg := sprintf("OCI.Linux.Namespaces: the container must have its own %s namespace", [ns.Type])
}) | {msg |
	not pidns_ok(c)
	msg := pidns_reason(c)
}) | {msg |
	some p in c.OCI.Linux.MaskedPaths
	not p in object.get(linux, "MaskedPaths", [])
	msg := sprintf("OCI.Linux.MaskedPaths: %s must stay masked", [p])
}) | {msg |
	some p in c.OCI.Linux.ReadonlyPaths
	not p in object.get(linux, "ReadonlyPaths", [])
	msg := sprintf("OCI.Linux.ReadonlyPaths: %s must stay read-only", [p])
}) | {msg |
	some k, v in object.get(linux, "Sysctl", {})
	not sysctl_allowed(k, v, c)
	msg := sprintf("OCI.Linux.Sysctl: %s=%s is not one of the pod spec's", [k, v])
}) | {msg |
	some key, pattern in c.OCI.Annotations
	not regex.match(pattern, object.get(annotations, key, ""))
	msg := sprintf("OCI.Annotations[%s]: %q does not match %q", [key, object.get(annotations, key, ""), pattern])
}) | {msg |
	not storages_ok(c)
	msg := storage_reason(c)
}) | {msg |
	not privileges_ok(c)
	msg := "OCI.Process.NoNewPrivileges: the pod spec forbids gaining privileges"
}

pidns_reason(c) := "sandbox_pidns: the pod spec shares its process namespace, and the container does not join it" if object.get(c, "sandbox_pidns", false)

pidns_reason(c) := "sandbox_pidns: the pod spec does not share its process namespace" if not object.get(c, "sandbox_pidns", false)

storage_reason(c) := "storages: the pause container takes no storage" if c.sandbox

storage_reason(c) := msg if {
	not c.sandbox
	given := [sprintf("%s %q", [s.driver, s.source]) | some s in input.storages]
	msg := sprintf("storages: %v is not the guest pull (image_guest_pull) of the pod spec's %s", [given, c.image])
}

# ---- what the guest pulled (Cocoon) --------------------------------------

pulled := policy_data.containers[data.pstate[input.container_id]]

PullImageRequest if {
	input.image == pulled.image
	input.manifest_digest == pulled.manifest_digest
}

reasons.PullImageRequest contains msg if {
	not data.pstate[input.container_id]
	msg := sprintf("container_id: %s was not created under this policy", [input.container_id])
}

reasons.PullImageRequest contains msg if {
	input.image != pulled.image
	msg := sprintf("image: %q is not the pod spec's %q", [input.image, pulled.image])
}

reasons.PullImageRequest contains msg if {
	input.manifest_digest != pulled.manifest_digest
	msg := sprintf("manifest_digest: %s of %s is not the pinned %s", [input.manifest_digest, input.image, pulled.manifest_digest])
}

# ---- processes and streams -------------------------------------------------

exec_container := policy_data.containers[data.pstate[input.container_id]]

exec_command_allowed if input.process.Args in exec_container.exec_commands

exec_command_allowed if input.process.Args in policy_data.request_defaults.ExecProcessRequest.allowed_commands

exec_command_allowed if {
	some r in policy_data.request_defaults.ExecProcessRequest.regex
	regex.match(r, concat(" ", input.process.Args))
}

exec_user_ok if exec_container.OCI.Process.User.UID == null

exec_user_ok if input.process.User.UID == exec_container.OCI.Process.User.UID

exec_env_ok if {
	every e in input.process.Env {
		env_allowed(e, exec_container)
	}
	names := [split(e, "=")[0] | some e in input.process.Env]
	count(names) == count({n | some n in names})
}

exec_privileges_ok if not exec_container.OCI.Process.NoNewPrivileges

exec_privileges_ok if input.process.NoNewPrivileges == true

ExecProcessRequest if {
	exec_container
	is_object(input.process)
	exec_command_allowed
	caps_ok(input.process, exec_container)
	exec_user_ok
	gid_ok(input.process, exec_container)
	groups_ok(input.process, exec_container)
	exec_env_ok
	input.process.Cwd == exec_container.OCI.Process.Cwd
	exec_privileges_ok
	input.string_user == null
}

exec_failures := (((((((({msg |
	not exec_command_allowed
	msg := sprintf("process.Args: %v is not a command the pod spec allows in this container", [object.get(input.process, "Args", null)])
} | {msg |
	some set in cap_sets
	some cap in caps_of(input.process, set)
	not cap in exec_container.OCI.Process.Capabilities[set]
	msg := sprintf("process.Capabilities.%s: %s is beyond the container's", [set, cap])
}) | {msg |
	not exec_user_ok
	msg := sprintf("process.User.UID: %v is not the container's %v", [object.get(object.get(input.process, "User", {}), "UID", null), exec_container.OCI.Process.User.UID])
}) | {msg |
	not gid_ok(input.process, exec_container)
	msg := sprintf("process.User.GID: %v is not the container's %v", [gid_of(input.process), exec_container.OCI.Process.User.GID])
}) | {msg |
	some g in groups_of(input.process)
	not group_allowed(g, input.process, exec_container)
	msg := sprintf("process.User.AdditionalGids: %v is not a group of the container", [g])
}) | {msg |
	input.string_user != null
	msg := "string_user: a user name is not allowed"
}) | {msg |
	not is_object(input.process.Capabilities)
	msg := "process.Capabilities: unset (the process would keep every capability)"
}) | {msg |
	not exec_env_ok
	msg := "process.Env: not the container's environment"
}) | {msg |
	input.process.Cwd != exec_container.OCI.Process.Cwd
	msg := sprintf("process.Cwd: %q is not the container's %q", [input.process.Cwd, exec_container.OCI.Process.Cwd])
}) | {msg |
	not exec_privileges_ok
	msg := "process.NoNewPrivileges: the container forbids gaining privileges"
}

reasons.ExecProcessRequest contains msg if {
	not data.pstate[input.container_id]
	msg := sprintf("container_id: %s was not created under this policy", [input.container_id])
}

reasons.ExecProcessRequest contains msg if {
	exec_container
	some msg in exec_failures
}

ReadStreamRequest if policy_data.request_defaults.ReadStreamRequest

reasons.ReadStreamRequest contains "the pod's output is not readable from the host (its policy refuses logs)" if {
	not policy_data.request_defaults.ReadStreamRequest
}

stdin_allowed if policy_data.request_defaults.WriteStreamRequest

stdin_allowed if policy_data.containers[data.pstate[input.container_id]].stdin

WriteStreamRequest if stdin_allowed

reasons.WriteStreamRequest contains "the container takes no input from the host (stdin is not open in the pod spec)" if {
	not stdin_allowed
}

# ---- guest network (Cocoon) ------------------------------------------------

ForwardLoopbackRequest if {
	every f in input.forwards {
		f.port in policy_data.common.loopback_ports
	}
}

reasons.ForwardLoopbackRequest contains msg if {
	some f in input.forwards
	not f.port in policy_data.common.loopback_ports
	msg := sprintf("forwards: guest port %d is not a loopback service of the pod spec (registry or trustee)", [f.port])
}

reasons.SetPolicyRequest contains "the policy in initdata cannot be replaced"
