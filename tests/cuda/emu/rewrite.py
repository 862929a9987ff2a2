"""rewrite.py IN OUT — a CUDA source with its kernel launches `k<<<grid, block, shmem, stream>>>(args)`
rewritten as emu::launch(...) calls, for the CPU emulation (emu.h); everything else is copied."""
import re, sys
def match_paren(s, i):
    d = 0
    for j in range(i, len(s)):
        if s[j] == '(': d += 1
        elif s[j] == ')':
            d -= 1
            if d == 0: return j
    raise ValueError
src = open(sys.argv[1]).read()
out, pos = [], 0
while True:
    i = src.find('<<<', pos)
    if i < 0: out.append(src[pos:]); break
    j = i
    if src[j-1] == '>':
        d, j = 0, j - 1
        while True:
            if src[j] == '>': d += 1
            elif src[j] == '<':
                d -= 1
                if d == 0: break
            j -= 1
    m = re.search(r'([A-Za-z_]\w*)\s*$', src[:j])
    ks = m.start(1); kexpr = src[ks:i].strip()
    e = src.find('>>>', i); cfg = [c.strip() for c in src[i+3:e].split(',')]
    # split config at top-level commas
    cfgs, d, cur = [], 0, ''
    for ch in src[i+3:e]:
        if ch in '([': d += 1
        if ch in ')]': d -= 1
        if ch == ',' and d == 0: cfgs.append(cur); cur = ''
        else: cur += ch
    cfgs.append(cur)
    while len(cfgs) < 4: cfgs.append('0')
    p = src.index('(', e); q = match_paren(src, p); args = src[p+1:q]
    out.append(src[pos:ks])
    out.append('emu::launch("%s", dim3(%s), dim3(%s), %s, %s, &%s%s)' % (m.group(1), cfgs[0], cfgs[1], cfgs[2], cfgs[3], kexpr, (', ' + args) if args.strip() else ''))
    pos = q + 1

res = ''.join(out)
def shared(m):
    decl = m.group(0)
    body = m.group(1)
    # the arrays declared: identifiers followed by '[' once the brackets' contents are dropped
    names = re.findall(r'(?:^|,)\s*(?:[\w\s\*]*?\s)?(\w+)\s*\[', re.sub(r'\[[^\]]*\]', '[]', body))
    return decl + ''.join(' emu::poison(&%s, sizeof %s);' % (n, n) for n in names)
res = re.sub(r'__shared__\s+([^;]*);', shared, res)
open(sys.argv[2], 'w').write(res)
