"""Summarise cuda-gdb backtrace samples (profile-gdb.sh): for each thread, how often each stack
top (the first N named frames) was seen. Usage: python3 bt_summary.py bt.gen.txt 7"""
import re, sys, collections
txt = open(sys.argv[1]).read()
samples = txt.split("=== SAMPLE END")
agg = collections.defaultdict(collections.Counter)
for s in samples:
    for th in re.split(r"\n(?=Thread \d+ \()", s):
        m = re.match(r'Thread (\d+) \(.*?"(.*?)"\)', th)
        if not m: continue
        name = f"{m.group(1)}:{m.group(2)}"
        frames = re.findall(r"#\d+\s+(?:0x[0-9a-f]+ in )?(.+?) \(", th)
        frames = [f for f in frames if f != '??']
        key = " <- ".join(f[:90] for f in frames[:int(sys.argv[2])])
        agg[name][key] += 1
for name, c in agg.items():
    if all('epoll' in k or 'pthread_cond' in k or 'poll' in k for k in c): continue
    print("##", name, sum(c.values()))
    for k, v in c.most_common(12): print(f"  {v:3d} {k}")
