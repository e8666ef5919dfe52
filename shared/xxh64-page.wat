;; xxh64 (seed 0) of one 4096-byte page, read in place from shared guest memory.
;;
;; Why not xxhash-wasm: it copies every input into its own wasm memory first, a pass over each byte that costs as
;; much as the hash itself. This module imports the guest's memory and hashes the page where it lies. A page is
;; always 4096 bytes, a whole number of 32-byte stripes, so only the four-accumulator path of xxh64 is needed: no
;; short-input path and no tail. The result goes out in two i32 globals, so JavaScript reads it without a BigInt.
;;
;; Since protocol 3 ferry's page hash is XXH3-64 (xxh3-page.wat); this module stays as the baseline that
;; bench/probes/page-costs.mjs and ws-ceiling.mjs measure it against.
;;
;; Build: npm run build:wasm (wabt) writes shared/xxh64-page.wasm.ts; a unit test checks the two agree.
(module
  (import "env" "memory" (memory 1 65536 shared))
  (global $lo (export "lo") (mut i32) (i32.const 0))
  (global $hi (export "hi") (mut i32) (i32.const 0))

  ;; round(acc, lane) = rotl(acc + lane * PRIME2, 31) * PRIME1
  (func $round (param $acc i64) (param $lane i64) (result i64)
    (i64.mul
      (i64.rotl (i64.add (local.get $acc) (i64.mul (local.get $lane) (i64.const 0xC2B2AE3D27D4EB4F))) (i64.const 31))
      (i64.const 0x9E3779B185EBCA87)))

  ;; merge(h, v) = (h ^ round(0, v)) * PRIME1 + PRIME4
  (func $merge (param $h i64) (param $v i64) (result i64)
    (i64.add
      (i64.mul (i64.xor (local.get $h) (call $round (i64.const 0) (local.get $v))) (i64.const 0x9E3779B185EBCA87))
      (i64.const 0x85EBCA77C2B2AE63)))

  (func (export "hashPage") (param $at i32)
    (local $stripes i32) (local $v1 i64) (local $v2 i64) (local $v3 i64) (local $v4 i64) (local $h i64)
    ;; seed 0: v1 = PRIME1 + PRIME2, v2 = PRIME2, v3 = 0, v4 = -PRIME1 (all mod 2^64)
    (local.set $v1 (i64.const 0x60EA27EEADC0B5D6))
    (local.set $v2 (i64.const 0xC2B2AE3D27D4EB4F))
    (local.set $v3 (i64.const 0))
    (local.set $v4 (i64.const 0x61C8864E7A143579))
    ;; 128 stripes of 32 bytes; counted, so a page at the very top of 4 GiB does not wrap the address compare.
    (local.set $stripes (i32.const 128))
    ;; The four rounds are written out here, not called: the hot loop runs 128 times a page.
    (loop $stripe
      (local.set $v1 (i64.mul (i64.rotl (i64.add (local.get $v1) (i64.mul (i64.load offset=0 (local.get $at)) (i64.const 0xC2B2AE3D27D4EB4F))) (i64.const 31)) (i64.const 0x9E3779B185EBCA87)))
      (local.set $v2 (i64.mul (i64.rotl (i64.add (local.get $v2) (i64.mul (i64.load offset=8 (local.get $at)) (i64.const 0xC2B2AE3D27D4EB4F))) (i64.const 31)) (i64.const 0x9E3779B185EBCA87)))
      (local.set $v3 (i64.mul (i64.rotl (i64.add (local.get $v3) (i64.mul (i64.load offset=16 (local.get $at)) (i64.const 0xC2B2AE3D27D4EB4F))) (i64.const 31)) (i64.const 0x9E3779B185EBCA87)))
      (local.set $v4 (i64.mul (i64.rotl (i64.add (local.get $v4) (i64.mul (i64.load offset=24 (local.get $at)) (i64.const 0xC2B2AE3D27D4EB4F))) (i64.const 31)) (i64.const 0x9E3779B185EBCA87)))
      (local.set $at (i32.add (local.get $at) (i32.const 32)))
      (local.set $stripes (i32.sub (local.get $stripes) (i32.const 1)))
      (br_if $stripe (local.get $stripes)))
    (local.set $h
      (i64.add
        (i64.add (i64.rotl (local.get $v1) (i64.const 1)) (i64.rotl (local.get $v2) (i64.const 7)))
        (i64.add (i64.rotl (local.get $v3) (i64.const 12)) (i64.rotl (local.get $v4) (i64.const 18)))))
    (local.set $h (call $merge (local.get $h) (local.get $v1)))
    (local.set $h (call $merge (local.get $h) (local.get $v2)))
    (local.set $h (call $merge (local.get $h) (local.get $v3)))
    (local.set $h (call $merge (local.get $h) (local.get $v4)))
    (local.set $h (i64.add (local.get $h) (i64.const 4096)))
    ;; avalanche
    (local.set $h (i64.mul (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 33))) (i64.const 0xC2B2AE3D27D4EB4F)))
    (local.set $h (i64.mul (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 29))) (i64.const 0x165667B19E3779F9)))
    (local.set $h (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 32))))
    (global.set $lo (i32.wrap_i64 (local.get $h)))
    (global.set $hi (i32.wrap_i64 (i64.shr_u (local.get $h) (i64.const 32))))))
