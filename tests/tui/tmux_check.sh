#!/usr/bin/env bash
# Real-terminal check of the training dashboard (CI runs it; needs tmux and a built binary):
# `steermoe train` on the tiny fixture model runs in a tmux pane; capture-pane must show the
# dashboard with a loss that moves; `q` must stop it with exit status 0 and the terminal
# restored (alternate screen left, the shell's text back).
#   STEERMOE_BIN=path/to/steermoe tests/tui/tmux_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${STEERMOE_BIN:-${CARGO_TARGET_DIR:-target}/debug/steermoe}")"
tmp="$(mktemp -d)"
session="steermoe-tui-$$"
trap 'tmux kill-session -t "$session" 2>/dev/null || true; rm -rf "$tmp"' EXIT
fail() { echo "tmux check FAILED: $*"; echo "--- pane:"; tmux capture-pane -p -t "$session" 2>/dev/null || true; exit 1; }

cat > "$tmp/tui.toml" <<TOML
[model]
dir = "$PWD/tests/fixtures/olmoe-tiny"
[data]
path = "$PWD/models/data/flipattack.json"
[collect]
batch_size = 8
max_batches = 3
max_new_tokens = 8
quality_filter = false
[analysis]
top_k = 3
[train]
lr = 0.01
epochs = 2000
checkpoint_every = 3
max_len = 96
[eval]
variants = []
TOML
"$BIN" --no-tui collect --config "$tmp/tui.toml" --out "$tmp/run" > /dev/null
"$BIN" --no-tui analyze --run "$tmp/run" > /dev/null

tmux new-session -d -s "$session" -x 100 -y 30 bash --norc --noprofile
tmux send-keys -t "$session" "'$BIN' train --run '$tmp/run'; echo EXIT=\$? > '$tmp/exit'" Enter

step_of() { tmux capture-pane -p -t "$session" | sed -n 's/.*step \([0-9][0-9]*\)\/.*/\1/p' | head -1; }
loss_of() { tmux capture-pane -p -t "$session" | sed -n 's/.*│loss \([0-9.]*\).*/\1/p' | head -1; }
for _ in $(seq 1 120); do
  [ -n "$(step_of)" ] && break
  sleep 0.5
done
first_step="$(step_of)"; first_loss="$(loss_of)"
[ -n "$first_step" ] || fail "no dashboard (no 'step N/M') after 60 s"
tmux capture-pane -p -t "$session" | grep -q "expert activation" || fail "no expert heatmap"
[ "$(tmux display -p -t "$session" '#{alternate_on}')" = 1 ] || fail "dashboard not on the alternate screen"
sleep 3
second_step="$(step_of)"; second_loss="$(loss_of)"
echo "dashboard: step $first_step loss $first_loss -> step $second_step loss $second_loss"
[ "$second_step" -gt "$first_step" ] || fail "steps did not advance"
[ "$second_loss" != "$first_loss" ] || fail "loss did not move"

tmux send-keys -t "$session" q
for _ in $(seq 1 120); do
  [ -s "$tmp/exit" ] && break
  sleep 0.5
done
[ -s "$tmp/exit" ] || fail "no exit 60 s after q"
grep -qx "EXIT=0" "$tmp/exit" || fail "exit status: $(cat "$tmp/exit")"
[ "$(tmux display -p -t "$session" '#{alternate_on}')" = 0 ] || fail "alternate screen still on"
pane="$(tmux capture-pane -p -t "$session")"
grep -q "stopped after step" <<<"$pane" || fail "no stop message in the restored terminal"
grep -q "expert activation" <<<"$pane" && fail "dashboard still drawn after exit"
echo "tmux check passed: dashboard drawn, loss moving, q exits 0, terminal restored"
