# Cocoon default attestation policy (id "default_cpu").
#
# Input: the annotated evidence: claims under the TEE name (input.sample,
# input.tdx, ...), report_data, runtime_data_claims, init_data,
# init_data_claims. Reference values come from the RVPS through
# query_reference_value("<name>"), which is null when the name is not set
# or has expired.
#
# Output: trust_claims, a map from EAR trust-vector claim to value; and
# explain, a set of messages saying which claim failed which rule and which
# reference value to register (shown by `cocoon explain`, never sent to the
# guest).
#
# The rules fail closed: a claim is affirmed only when every reference
# value it depends on is registered and matches. A missing reference value
# never turns a check off. For a hardware TEE:
#   executables   the firmware AND what it booted (kernel, initrd, command
#                 line) are pinned;
#   hardware      the platform is genuine and its TCB is vouched for by the
#                 trustee (not only by material the guest sent);
#   configuration no debug, and the initdata digest (which carries the agent
#                 policy and the guest's trustee settings) is pinned.
package policy

import rego.v1

default executables := 33

default hardware := 97

default configuration := 36

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
}

# A hex claim is among the hex strings of reference value `name` (any case).
# A reference value that is not a list pins nothing.
pinned(name, v) if {
	refs := query_reference_value(name)
	is_array(refs)
	some r in refs
	is_string(r)
	lower(r) == lower(v)
}

# ---- initdata (every hardware TEE) -----------------------------------------
# Reference value "init_data": the accepted initdata digests, hex, as the
# init_data claim shows them (`cocoon attest --init-data F` prints it; so do
# the trustee's denials). The entry "none" accepts a guest that sends no
# initdata (the verifiers already refuse one whose evidence binds initdata it
# did not send).

hardware_tee if {
	some t in {"tdx", "snp", "sgx", "tpm", "az-snp-vtpm", "az-tdx-vtpm", "cca", "se", "csv"}
	input[t]
}

init_data_ok if pinned("init_data", input.init_data)

init_data_ok if {
	not input.init_data
	refs := query_reference_value("init_data")
	is_array(refs)
	"none" in refs
}

explain contains msg if {
	hardware_tee
	not init_data_ok
	input.init_data
	msg := sprintf("configuration: claim init_data=%v is not in reference value 'init_data'=%v: register the digest of the initdata this guest was started with", [input.init_data, query_reference_value("init_data")])
}

explain contains msg if {
	hardware_tee
	not init_data_ok
	not input.init_data
	msg := sprintf("configuration: the guest sent no initdata, which reference value 'init_data'=%v does not accept: start the guest with initdata and register its digest, or add \"none\" to 'init_data'", [query_reference_value("init_data")])
}

# ---- sample (development TEE; proves nothing) -----------------------------

executables := 3 if {
	input.sample.launch_digest in query_reference_value("launch_digest")
}

hardware := 2 if {
	input.sample.svn in query_reference_value("svn")
	input.sample.platform_version.major == query_reference_value("major_version")
	input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
}

configuration := 2 if {
	input.sample
	input.sample.debug == false
}

explain contains msg if {
	input.sample
	not input.sample.launch_digest in query_reference_value("launch_digest")
	msg := sprintf("executables: claim sample.launch_digest=%v is not in reference value 'launch_digest'=%v", [input.sample.launch_digest, query_reference_value("launch_digest")])
}

explain contains msg if {
	input.sample
	not input.sample.svn in query_reference_value("svn")
	msg := sprintf("hardware: claim sample.svn=%v is not in reference value 'svn'=%v", [input.sample.svn, query_reference_value("svn")])
}

explain contains msg if {
	input.sample
	input.sample.platform_version.major != query_reference_value("major_version")
	msg := sprintf("hardware: claim sample.platform_version.major=%v differs from reference value 'major_version'=%v", [input.sample.platform_version.major, query_reference_value("major_version")])
}

explain contains msg if {
	input.sample
	not input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
	msg := sprintf("hardware: claim sample.platform_version.minor=%v is below reference value 'minimum_minor_version'=%v", [input.sample.platform_version.minor, query_reference_value("minimum_minor_version")])
}

explain contains "configuration: claim sample.debug is true" if {
	input.sample.debug == true
}

# ---- tpm, and the vTPM of Azure confidential VMs ---------------------------
# PCR N is judged by reference value "tpm_pcrN" (a list of hex digests).
# Executables: the boot PCRs must all be registered and match, and so must
# every other PCR that has a reference value. The boot PCRs are 0-7 (the
# firmware's: its code, its configuration including the host-supplied ACPI
# tables, option ROMs, the boot loader and kernel, the partition table and
# boot variables, secure-boot policy) and 9 (what the kernel's EFI stub or
# the boot loader loaded: initrd, command line). PCR 8 carries the initdata
# (judged by init_data) and PCR 23 the runtime events.
# Hardware: the quote's AK is trusted; it is affirmed only when the admin
# declared that AK, or the EK CA that enrolled it, hardware-backed (a software
# TPM on the host could otherwise have made the quote): warning tier else.

tpm_boot_pcrs := [0, 1, 2, 3, 4, 5, 6, 7, 9]

vtpm_pcrs := input.tpm

vtpm_pcrs := input["az-snp-vtpm"].tpm

vtpm_pcrs := input["az-tdx-vtpm"].tpm

vtpm_name := "tpm" if input.tpm

vtpm_name := "az-snp-vtpm.tpm" if input["az-snp-vtpm"]

vtpm_name := "az-tdx-vtpm.tpm" if input["az-tdx-vtpm"]

# Claims are named pcr00 .. pcr23, reference values tpm_pcr0 .. tpm_pcr23.
tpm_pcr_key(n) := sprintf("pcr0%d", [n]) if n < 10

tpm_pcr_key(n) := sprintf("pcr%d", [n]) if n >= 10

# A PCR whose claim is missing is checked as null, which matches nothing.
tpm_pcr_checks[n] := {"claim": object.get(vtpm_pcrs, tpm_pcr_key(n), null), "refs": refs} if {
	vtpm_pcrs
	some n in numbers.range(0, 23)
	refs := query_reference_value(sprintf("tpm_pcr%d", [n]))
	refs != null
}

tpm_pcr_failures contains n if {
	some n, c in tpm_pcr_checks
	not pinned(sprintf("tpm_pcr%d", [n]), c.claim)
}

tpm_boot_pcrs_missing contains n if {
	vtpm_pcrs
	some n in tpm_boot_pcrs
	not tpm_pcr_checks[n]
}

tpm_pcrs_ok if {
	count(tpm_boot_pcrs_missing) == 0
	count(tpm_pcr_failures) == 0
}

executables := 3 if {
	vtpm_pcrs
	tpm_pcrs_ok
}

hardware := 2 if input.tpm.ak_hardware_backed == true

hardware := 32 if {
	input.tpm
	not input.tpm.ak_hardware_backed == true
}

configuration := 2 if {
	input.tpm
	count(tpm_pcr_failures) == 0
	init_data_ok
}

explain contains msg if {
	some n in tpm_pcr_failures
	c := tpm_pcr_checks[n]
	msg := sprintf("executables: claim %v.%v=%v is not in reference value 'tpm_pcr%d'=%v", [vtpm_name, tpm_pcr_key(n), c.claim, n, c.refs])
}

explain contains msg if {
	some n in tpm_boot_pcrs_missing
	msg := sprintf("executables: boot PCR %d is not pinned: register reference value 'tpm_pcr%d' (this guest has %v.%v=%v) with `cocoon admin add-reference-value`", [n, n, vtpm_name, tpm_pcr_key(n), vtpm_pcrs[tpm_pcr_key(n)]])
}

explain contains msg if {
	input.tpm
	not input.tpm.ak_hardware_backed == true
	msg := sprintf("hardware: the TPM's AK (trusted by %v) is not declared hardware-backed, so a software TPM on the host may have made this quote: if it is a hardware TPM (or a vTPM you accept), add it with `cocoon admin add-tpm-ak --file ak.pem --hardware-backed`, or give its EK CA with --tpm-hardware-ek-ca", [input.tpm.ak_trusted_by])
}

# ---- snp -------------------------------------------------------------------
# Executables: "snp_launch_measurement" (hex launch digests; the launch
# measurement covers firmware, kernel, initrd and command line when the VM
# is started with kernel hashes). Hardware: the report chains to AMD, and
# the reported TCB meets the minimums "snp_min_tcb_bootloader",
# "snp_min_tcb_tee", "snp_min_tcb_snp" and "snp_min_tcb_microcode" (one
# number each), which must all be registered. The TCB and debug rules also
# judge the SNP report of an Azure vTPM VM (az-snp-vtpm), whose launch
# measurement is the paravisor's and whose executables are judged by PCRs.

executables := 3 if pinned("snp_launch_measurement", input.snp.measurement)

snp_claims := input.snp

snp_claims := input["az-snp-vtpm"]

snp_name := "snp" if input.snp

snp_name := "az-snp-vtpm" if input["az-snp-vtpm"]

snp_tcb_parts := ["bootloader", "tee", "snp", "microcode"]

snp_tcb_missing contains part if {
	snp_claims
	some part in snp_tcb_parts
	query_reference_value(sprintf("snp_min_tcb_%s", [part])) == null
}

# Fails closed: a minimum that is set but cannot be compared (not a list
# of one number, or no such claim) counts as not met.
snp_tcb_below_minimum contains part if {
	snp_claims
	some part in snp_tcb_parts
	refs := query_reference_value(sprintf("snp_min_tcb_%s", [part]))
	refs != null
	not snp_tcb_meets(part, refs)
}

snp_tcb_meets(part, refs) if {
	is_array(refs)
	count(refs) == 1
	to_number(snp_claims[sprintf("reported_tcb_%s", [part])]) >= to_number(refs[0])
}

snp_tcb_ok if {
	count(snp_tcb_missing) == 0
	count(snp_tcb_below_minimum) == 0
}

hardware := 2 if {
	input.snp
	snp_tcb_ok
}

# On Azure the SNP report is the paravisor's (HCL): any SNP guest at VMPL 0
# could produce one binding a key of its own, so the hardware claim also
# needs the HCL's launch measurement among "az_snp_hcl_measurement".
hardware := 2 if {
	input["az-snp-vtpm"]
	snp_tcb_ok
	pinned("az_snp_hcl_measurement", input["az-snp-vtpm"].measurement)
}

explain contains msg if {
	input["az-snp-vtpm"]
	not pinned("az_snp_hcl_measurement", input["az-snp-vtpm"].measurement)
	msg := sprintf("hardware: claim az-snp-vtpm.measurement=%v is not in reference value 'az_snp_hcl_measurement'=%v (the Azure paravisor's launch measurement must be pinned)", [input["az-snp-vtpm"].measurement, query_reference_value("az_snp_hcl_measurement")])
}

# Neither debugging nor a migration agent: the guest policy bits are set by
# whoever launches the VM and are not in the launch measurement.
configuration := 2 if {
	snp_claims.policy_debug_allowed == false
	snp_claims.policy_migrate_ma == false
	init_data_ok
}

explain contains msg if {
	snp_claims.policy_migrate_ma == true
	msg := sprintf("configuration: claim %s.policy_migrate_ma is true (the guest policy lets a migration agent move it)", [snp_name])
}

explain contains msg if {
	input.snp
	not pinned("snp_launch_measurement", input.snp.measurement)
	msg := sprintf("executables: claim snp.measurement=%v is not in reference value 'snp_launch_measurement'=%v", [input.snp.measurement, query_reference_value("snp_launch_measurement")])
}

explain contains msg if {
	some part in snp_tcb_missing
	msg := sprintf("hardware: no TCB minimum 'snp_min_tcb_%s' is registered (this guest reports %s.reported_tcb_%s=%v): register the lowest you accept, e.g. `cocoon admin add-reference-value snp_min_tcb_%s %v`", [part, snp_name, part, snp_claims[sprintf("reported_tcb_%s", [part])], part, snp_claims[sprintf("reported_tcb_%s", [part])]])
}

explain contains msg if {
	some part in snp_tcb_below_minimum
	msg := sprintf("hardware: claim %s.reported_tcb_%s=%v is below (or cannot be compared with) reference value 'snp_min_tcb_%s'=%v", [snp_name, part, snp_claims[sprintf("reported_tcb_%s", [part])], part, query_reference_value(sprintf("snp_min_tcb_%s", [part]))])
}

explain contains msg if {
	snp_claims.policy_debug_allowed == true
	msg := sprintf("configuration: claim %s.policy_debug_allowed is true (the guest policy lets the host debug it)", [snp_name])
}

# ---- tdx -------------------------------------------------------------------
# Executables: "tdx_mr_td" (the firmware, hex) and what the firmware
# measured into RTMR0 (its configuration, including the host-supplied ACPI
# tables), RTMR1 (boot loaders, kernel) and RTMR2 (kernel command line,
# initrd). Each register is pinned either by its value ("tdx_rtmr_0",
# "tdx_rtmr_1", "tdx_rtmr_2") or, with a CC event log the trustee replayed,
# by every digest measured into it ("tdx_ccel_rtmr_0", "tdx_ccel_rtmr_1",
# "tdx_ccel_rtmr_2": each event digest must be among them, whatever the
# event is labelled, since the registers do not vouch for labels).
# Hardware: the TCB status from the trustee's own DCAP collateral
# (--dcap-collateral or --pccs-url) is UpToDate; collateral the guest sent
# only yields evidence_collateral_tcb_status, which is not enough.
# Configuration: not a debug TD, not migratable, no service TD bound unless
# pinned in "tdx_mr_servicetd", and the initdata pinned.
# The hardware and configuration rules also judge the TD quote of an Azure
# vTPM VM (az-tdx-vtpm), whose executables are judged by PCRs (above).

tdx_body := input.tdx.quote.body

tdx_rtmrs := [0, 1, 2]

# RTMR i is pinned by its value, or by every event digest the log shows.
tdx_rtmr_ok(i) if pinned(sprintf("tdx_rtmr_%d", [i]), tdx_body[sprintf("rtmr_%d", [i])])

tdx_rtmr_ok(i) if {
	events := input.tdx.ccel[sprintf("rtmr%d", [i])]
	count(events) > 0
	every d in events {
		pinned(sprintf("tdx_ccel_rtmr_%d", [i]), d)
	}
}

tdx_rtmr_unpinned contains i if {
	input.tdx
	some i in tdx_rtmrs
	not tdx_rtmr_ok(i)
}

executables := 3 if {
	pinned("tdx_mr_td", tdx_body.mr_td)
	count(tdx_rtmr_unpinned) == 0
}

hardware := 2 if {
	input.tdx.tcb_status == "UpToDate"
}

# As for SNP: the TD is the Azure paravisor's; its MRTD must be pinned in
# "az_tdx_hcl_mr_td".
hardware := 2 if {
	input["az-tdx-vtpm"].tcb_status == "UpToDate"
	pinned("az_tdx_hcl_mr_td", input["az-tdx-vtpm"].quote.body.mr_td)
}

explain contains msg if {
	input["az-tdx-vtpm"]
	not pinned("az_tdx_hcl_mr_td", input["az-tdx-vtpm"].quote.body.mr_td)
	msg := sprintf("hardware: claim az-tdx-vtpm.quote.body.mr_td=%v is not in reference value 'az_tdx_hcl_mr_td'=%v (the Azure paravisor's MRTD must be pinned)", [input["az-tdx-vtpm"].quote.body.mr_td, query_reference_value("az_tdx_hcl_mr_td")])
}

tdx_claims := input.tdx

tdx_claims := input["az-tdx-vtpm"]

tdx_name := "tdx" if input.tdx

tdx_name := "az-tdx-vtpm" if input["az-tdx-vtpm"]

# A service TD (TDX 1.5) bound to this TD can migrate or inspect it: none,
# or one pinned.
tdx_servicetd_ok if not tdx_claims.quote.body.mr_servicetd

tdx_servicetd_ok if regex.match("^0*$", tdx_claims.quote.body.mr_servicetd)

tdx_servicetd_ok if pinned("tdx_mr_servicetd", tdx_claims.quote.body.mr_servicetd)

configuration := 2 if {
	tdx_claims.td_attributes.debug == false
	tdx_claims.td_attributes.migratable == false
	tdx_servicetd_ok
	init_data_ok
}

explain contains msg if {
	input.tdx
	not pinned("tdx_mr_td", tdx_body.mr_td)
	msg := sprintf("executables: claim tdx.quote.body.mr_td=%v is not in reference value 'tdx_mr_td'=%v", [tdx_body.mr_td, query_reference_value("tdx_mr_td")])
}

explain contains msg if {
	some i in tdx_rtmr_unpinned
	r := sprintf("rtmr_%d", [i])
	unpinned := [d | some d in object.get(object.get(input.tdx, "ccel", {}), sprintf("rtmr%d", [i]), []); not pinned(sprintf("tdx_ccel_rtmr_%d", [i]), d)]
	msg := sprintf("executables: RTMR%d is not pinned: claim tdx.quote.body.%s=%v is not in reference value 'tdx_%s'=%v; or, with a CC event log, register every event digest it shows in 'tdx_ccel_rtmr_%d' (not yet registered: %v)", [i, r, tdx_body[r], r, query_reference_value(sprintf("tdx_%s", [r])), i, unpinned])
}

explain contains msg if {
	input.tdx
	input.tdx.tcb_status != "UpToDate"
	not input.tdx.evidence_collateral_tcb_status
	msg := sprintf("hardware: claim tdx.tcb_status=%v is not UpToDate (give the trustee DCAP collateral with --dcap-collateral or --pccs-url, or update the platform)", [input.tdx.tcb_status])
}

explain contains msg if {
	tdx_claims.td_attributes.debug == true
	msg := sprintf("configuration: claim %s.td_attributes.debug is true (a debug TD)", [tdx_name])
}

explain contains msg if {
	tdx_claims.td_attributes.migratable == true
	msg := sprintf("configuration: claim %s.td_attributes.migratable is true (the TD can be migrated)", [tdx_name])
}

explain contains msg if {
	tdx_claims
	not tdx_servicetd_ok
	msg := sprintf("configuration: claim %s.quote.body.mr_servicetd=%v binds a service TD that is not in reference value 'tdx_mr_servicetd'=%v", [tdx_name, tdx_claims.quote.body.mr_servicetd, query_reference_value("tdx_mr_servicetd")])
}

explain contains msg if {
	input["az-tdx-vtpm"].tcb_status != "UpToDate"
	not input["az-tdx-vtpm"].evidence_collateral_tcb_status
	msg := sprintf("hardware: claim az-tdx-vtpm.tcb_status=%v is not UpToDate (give the trustee DCAP collateral with --dcap-collateral or --pccs-url, or update the platform)", [input["az-tdx-vtpm"].tcb_status])
}

# Collateral the guest sent is Intel-signed but may be stale: its verdict
# is reported, never affirmed.
explain contains msg if {
	some t in {"tdx", "az-tdx-vtpm", "sgx"}
	input[t].evidence_collateral_tcb_status
	input[t].tcb_status != "UpToDate"
	msg := sprintf("hardware: the TCB status %v (%s.evidence_collateral_tcb_status) comes only from collateral the guest sent, which may predate a TCB recovery or a revocation; freshness is the trustee's call: give it --dcap-collateral or --pccs-url", [input[t].evidence_collateral_tcb_status, t])
}

# ---- sgx -------------------------------------------------------------------
# Executables: "sgx_mr_enclave" and "sgx_mr_signer" (hex lists), both
# required. Hardware as for TDX. An enclave with the DEBUG attribute (bit 1
# of attributes.flags) fails configuration; so does an unpinned CONFIGID
# (init_data).

executables := 3 if {
	pinned("sgx_mr_enclave", input.sgx.body.mr_enclave)
	pinned("sgx_mr_signer", input.sgx.body.mr_signer)
}

hardware := 2 if {
	input.sgx.tcb_status == "UpToDate"
}

# attributes.flags is little-endian hex: its second character holds bits 0-3.
sgx_debug if substring(input.sgx.body["attributes.flags"], 1, 1) in {"2", "3", "6", "7", "a", "b", "e", "f"}

# Fail closed: affirmed only for a well-formed flags claim without DEBUG.
sgx_release if {
	count(input.sgx.body["attributes.flags"]) == 16
	not sgx_debug
}

configuration := 2 if {
	input.sgx
	sgx_release
	init_data_ok
}

explain contains msg if {
	input.sgx
	not pinned("sgx_mr_enclave", input.sgx.body.mr_enclave)
	msg := sprintf("executables: claim sgx.body.mr_enclave=%v is not in reference value 'sgx_mr_enclave'=%v", [input.sgx.body.mr_enclave, query_reference_value("sgx_mr_enclave")])
}

explain contains msg if {
	input.sgx
	not pinned("sgx_mr_signer", input.sgx.body.mr_signer)
	msg := sprintf("executables: claim sgx.body.mr_signer=%v is not in reference value 'sgx_mr_signer'=%v", [input.sgx.body.mr_signer, query_reference_value("sgx_mr_signer")])
}

explain contains msg if {
	input.sgx
	input.sgx.tcb_status != "UpToDate"
	not input.sgx.evidence_collateral_tcb_status
	msg := sprintf("hardware: claim sgx.tcb_status=%v is not UpToDate (give the trustee DCAP collateral with --dcap-collateral or --pccs-url, or update the platform)", [input.sgx.tcb_status])
}

explain contains "configuration: claim sgx.body.attributes.flags has DEBUG set (a debug enclave)" if {
	sgx_debug
}

explain contains "configuration: claim sgx.body.attributes.flags is missing or not 8 bytes of hex" if {
	input.sgx
	not sgx_debug
	not sgx_release
}

# ---- cca -------------------------------------------------------------------
# Executables: the realm initial measurement (base64, as in
# the claims) is in "cca_realm_initial_measurement", and every realm
# extensible measurement REM<i> is in "cca_realm_rem<i>" (base64 lists; a
# REM the realm never extends is registered with its all-zero value).
# Configuration: the platform's security lifecycle is "secured"
# (0x3000-0x30ff); debug and provisioning states are not; initdata pinned.

# Hardware: the platform token verified with a trusted CPAK, and every
# platform software component (firmware, RMM, ...) measured as pinned in
# "cca_platform_sw_component" (base64 measurement values).
cca_sw_unpinned contains m if {
	some c in input.cca.platform["cca-platform-sw-components"]
	m := c["measurement-value"]
	not cca_pinned("cca_platform_sw_component", m)
}

hardware := 2 if {
	count(input.cca.platform["cca-platform-sw-components"]) > 0
	count(cca_sw_unpinned) == 0
}

explain contains msg if {
	input.cca
	count(cca_sw_unpinned) > 0
	msg := sprintf("hardware: platform software component measurements %v are not in reference value 'cca_platform_sw_component'=%v", [cca_sw_unpinned, query_reference_value("cca_platform_sw_component")])
}

cca_realm := input.cca.realm

cca_rem_failures contains i if {
	some i, m in cca_realm["cca-realm-extensible-measurements"]
	not cca_pinned(sprintf("cca_realm_rem%d", [i]), m)
}

# Base64 claims compare exactly (base64 is case-sensitive).
cca_pinned(name, v) if {
	refs := query_reference_value(name)
	is_array(refs)
	v in refs
}

executables := 3 if {
	cca_pinned("cca_realm_initial_measurement", cca_realm["cca-realm-initial-measurement"])
	count(cca_realm["cca-realm-extensible-measurements"]) > 0
	count(cca_rem_failures) == 0
}

cca_secured if {
	input.cca.platform["cca-platform-lifecycle"] >= 12288
	input.cca.platform["cca-platform-lifecycle"] <= 12543
}

configuration := 2 if {
	input.cca
	cca_secured
	init_data_ok
}

explain contains msg if {
	input.cca
	not cca_pinned("cca_realm_initial_measurement", cca_realm["cca-realm-initial-measurement"])
	msg := sprintf("executables: claim cca.realm.cca-realm-initial-measurement=%v is not in reference value 'cca_realm_initial_measurement'=%v", [cca_realm["cca-realm-initial-measurement"], query_reference_value("cca_realm_initial_measurement")])
}

explain contains msg if {
	some i in cca_rem_failures
	msg := sprintf("executables: claim cca.realm.cca-realm-extensible-measurements[%d]=%v is not in reference value 'cca_realm_rem%d'=%v", [i, cca_realm["cca-realm-extensible-measurements"][i], i, query_reference_value(sprintf("cca_realm_rem%d", [i]))])
}

explain contains msg if {
	input.cca
	not cca_secured
	msg := sprintf("configuration: claim cca.platform.cca-platform-lifecycle=%v is not a secured state (0x3000-0x30ff)", [input.cca.platform["cca-platform-lifecycle"]])
}
