"""Shell integration: ``eval "$(llmstack activate <shell>)"`` and ``eval "$(llmstack reload)"``.

The hook runs before every prompt (and on ``cd`` in zsh and fish). It walks up from
``$PWD`` to the nearest directory holding ``.llmstack/`` (never climbing into or past
``$HOME``, as :func:`llmstack.project.paths.find_project`) and reads its channel
marker with the shell's own ``read``, so no process starts unless the project or
its channel changed. On entering, it saves every variable it manages (set or not)
and the prompt, asks ``llmstack activate <shell> --env ROOT`` for the values and
prefixes the prompt with ``[llmstack:<project>]`` (colour by channel); on leaving
it restores exactly what was there: values back, unset what was unset. A channel
change inside the project re-activates it at the next prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path

from ..config.address import DEFAULT_HOST, DEFAULT_PORT, url_for
from ..errors import UserError
from ..project.channels import live_channel
from ..project.paths import Project, find_project, project_at
from ..project.pidrecord import running_record
from ..settings import Settings
from .registry import Command

SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
MANAGED = ("OPENCODE_CONFIG", "LLMSTACK_WORK_DIR", "LLMSTACK_ACTIVE", "LLMSTACK_CHANNEL",
           "LLMSTACK_REMOTE_URL", "LLMSTACK_MODELS_INI", "LLMSTACK_BASE_URL")
COLORS = {"current": 38, "next": 208, "external": 135}
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+=, -]")  # nothing a prompt would expand


def project_env(project: Project) -> dict[str, str | None]:
    """The managed variables inside ``project`` (None: unset there)."""
    root, state = project.root, project.state
    channel = live_channel(project)
    ini = state / "models.ini"
    env: dict[str, str | None] = dict.fromkeys(MANAGED)
    env.update(OPENCODE_CONFIG=str(project.opencode_json), LLMSTACK_WORK_DIR=str(root),
               LLMSTACK_ACTIVE="1", LLMSTACK_CHANNEL=channel.name)
    if channel.external and channel.url:
        env.update(LLMSTACK_REMOTE_URL=channel.url, LLMSTACK_BASE_URL=f"{channel.url}/v1")
        return env
    if ini.exists():
        env["LLMSTACK_MODELS_INI"] = str(ini)
    env["LLMSTACK_BASE_URL"] = _local_url(root, ini) + "/v1"
    return env


def _local_url(root: Path, ini: Path) -> str:
    """The running stack's URL, else the one models.ini's [DEFAULT] names (or the default)."""
    record = running_record(root)
    if record is not None:
        return record.url
    if ini.exists():
        from ..config.ini import load_stack
        with contextlib.suppress(UserError):  # the hook still activates; start/serve report it
            return load_stack(ini).url
    return url_for(DEFAULT_HOST, DEFAULT_PORT)


def prompt_label(project: Project) -> tuple[str, int]:
    """``[llmstack:<project>]`` (plus the URL when external) and its 256-colour code."""
    channel = live_channel(project)
    name = project.root.name + (f" {channel.url}" if channel.external else "")
    return f"[llmstack:{_UNSAFE.sub('_', name)}]", COLORS.get(channel.name, COLORS["current"])


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _fish_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ps_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def env_code(shell: str, project: Project) -> str:
    """Shell code setting the managed variables and the prompt prefix for ``project``."""
    env = project_env(project)
    label, color = prompt_label(project)
    lines = []
    if shell in ("bash", "zsh"):
        for name, value in env.items():
            lines.append(f"unset {name}" if value is None else f"export {name}={_sh_quote(value)}")
        prefix = (f"\\[\\e[38;5;{color}m\\]{label}\\[\\e[0m\\] " if shell == "bash"
                  else f"%F{{{color}}}{label}%f ")
        lines.append(f"_LLMSTACK_PS1_PREFIX={_sh_quote(prefix)}")
    elif shell == "fish":
        for name, value in env.items():
            lines.append(f"set -e {name}" if value is None
                         else f"set -gx {name} {_fish_quote(value)}")
        lines.append(f"set -g __llmstack_label {_fish_quote(label)}")
        lines.append(f"set -g __llmstack_color {color}")
    else:
        for name, value in env.items():
            lines.append(f"$env:{name} = {_ps_quote(value)}" if value is not None
                         else f"Remove-Item Env:{name} -ErrorAction SilentlyContinue")
        lines.append(f"$global:__LlmstackLabel = {_ps_quote(label)}")
        lines.append(f"$global:__LlmstackColor = {color}")
    return "\n".join(lines) + "\n"


_POSIX_HOOK = r"""# llmstack shell hook (@SHELL@): eval "$(llmstack activate @SHELL@)"
_llmstack_hook() {
  local d="$PWD" ch="" url="" m key=""
  while [ -n "$d" ] && [ ! -d "$d/.llmstack" ]; do
    d="${d%/*}"
    case "${HOME-}/" in "$d"/*) d="" ;; esac  # never climb into or past home
  done
  if [ -n "$d" ]; then
    for m in active-channel default-channel; do
      if [ -r "$d/.llmstack/$m" ]; then read -r ch url < "$d/.llmstack/$m" || :; break; fi
    done
    key="$d|$ch|$url"
  fi
  if [ "$key" = "${_LLMSTACK_KEY-}" ] && [ "${1-}" != force ]; then return 0; fi
  if [ -n "${_LLMSTACK_KEY-}" ]; then _llmstack_leave; fi
  if [ -n "$d" ]; then _llmstack_enter "$d" "$key"; fi
  return 0
}
_llmstack_enter() {
  local code v
  if ! code="$(@LLMSTACK@ activate @SHELL@ --env "$1")"; then
    printf '[llmstack] could not activate %s\n' "$1" >&2
    return 0
  fi
  _LLMSTACK_SAVED=""
  for v in @VARS@; do
    if eval "[ -n \"\${$v+x}\" ]"; then
      eval "_LLMSTACK_OLD_$v=\"\${$v}\""
      _LLMSTACK_SAVED="$_LLMSTACK_SAVED $v"
    fi
  done
  _LLMSTACK_OLD_PS1="${PS1-}"
  eval "$code"
  PS1="$_LLMSTACK_PS1_PREFIX${PS1-}"
  _LLMSTACK_KEY="$2"
}
_llmstack_leave() {
  local v
  for v in @VARS@; do
    case " $_LLMSTACK_SAVED " in
      *" $v "*) eval "export $v=\"\$_LLMSTACK_OLD_$v\""; unset "_LLMSTACK_OLD_$v" ;;
      *) unset "$v" ;;
    esac
  done
  PS1="$_LLMSTACK_OLD_PS1"
  unset _LLMSTACK_OLD_PS1 _LLMSTACK_SAVED _LLMSTACK_KEY _LLMSTACK_PS1_PREFIX
}
"""

_BASH_INSTALL = r"""case ";${PROMPT_COMMAND-};" in
  *";_llmstack_hook;"*) ;;
  *) PROMPT_COMMAND="_llmstack_hook;${PROMPT_COMMAND-}" ;;
esac
_llmstack_hook
"""

_ZSH_INSTALL = r"""autoload -Uz add-zsh-hook
add-zsh-hook precmd _llmstack_hook
add-zsh-hook chpwd _llmstack_hook
_llmstack_hook
"""

_FISH_HOOK = r"""# llmstack shell hook (fish): llmstack activate fish | source
function __llmstack_hook --on-event fish_prompt --on-variable PWD
    set -l d $PWD
    set -l ch ''
    set -l url ''
    set -l key ''
    while test -n "$d"; and not test -d "$d/.llmstack"
        set d (string replace -r '/[^/]*$' '' -- $d)
        if string match -q -- "$d/*" "$HOME/"  # never climb into or past home
            set d ''
        end
    end
    if test -n "$d"
        for m in active-channel default-channel
            if test -r "$d/.llmstack/$m"
                read ch url < "$d/.llmstack/$m"
                break
            end
        end
        set key "$d|$ch|$url"
    end
    if test "$key" = "$__llmstack_key"; and test "$argv[1]" != force
        return 0
    end
    if test -n "$__llmstack_key"
        __llmstack_leave
    end
    if test -n "$d"
        __llmstack_enter $d $key
    end
end
function __llmstack_enter
    set -l code (@LLMSTACK@ activate fish --env $argv[1])
    or begin
        echo "[llmstack] could not activate $argv[1]" >&2
        return 0
    end
    set -g __llmstack_saved
    for v in @VARS@
        if set -q $v
            set -g __llmstack_old_$v $$v
            set -a __llmstack_saved $v
        end
    end
    string join \n -- $code | source
    if functions -q fish_prompt
        functions -c fish_prompt __llmstack_orig_prompt
    else
        function __llmstack_orig_prompt
        end
    end
    function fish_prompt
        printf '\e[38;5;%sm%s\e[0m ' $__llmstack_color $__llmstack_label
        __llmstack_orig_prompt
    end
    set -g __llmstack_key $argv[2]
end
function __llmstack_leave
    for v in @VARS@
        if contains -- $v $__llmstack_saved
            set -l old __llmstack_old_$v
            set -gx $v $$old
            set -e $old
        else
            set -e $v
        end
    end
    functions -e fish_prompt
    functions -c __llmstack_orig_prompt fish_prompt
    functions -e __llmstack_orig_prompt
    set -e __llmstack_saved __llmstack_key __llmstack_label __llmstack_color
end
__llmstack_hook
"""

_PS_HOOK = r"""# llmstack shell hook (PowerShell):
#   llmstack activate powershell | Out-String | Invoke-Expression
$global:__LlmstackVars = @(@PSVARS@)
function global:__LlmstackHook([switch]$Force) {
    $d = (Get-Location).ProviderPath
    while ($d -and -not (Test-Path -LiteralPath (Join-Path $d '.llmstack') -PathType Container)) {
        $d = Split-Path -Parent $d
        $sep = [IO.Path]::DirectorySeparatorChar
        if ($d -and ($HOME + $sep).StartsWith($d.TrimEnd($sep) + $sep)) { $d = '' }  # not into home
    }
    $key = ''
    if ($d) {
        $ch = ''
        foreach ($m in 'active-channel', 'default-channel') {
            $f = Join-Path (Join-Path $d '.llmstack') $m
            if (Test-Path -LiteralPath $f) {
                $ch = Get-Content -LiteralPath $f -TotalCount 1
                break
            }
        }
        $key = "$d|$ch"
    }
    if ($key -eq $global:__LlmstackKey -and -not $Force) { return }
    if ($global:__LlmstackKey) { __LlmstackLeave }
    if ($d) { __LlmstackEnter $d $key }
}
function global:__LlmstackEnter([string]$Root, [string]$Key) {
    $code = & @LLMSTACK@ activate powershell --env $Root | Out-String
    if ($LASTEXITCODE -ne 0) { Write-Warning "[llmstack] could not activate $Root"; return }
    $global:__LlmstackSaved = @{}
    foreach ($v in $global:__LlmstackVars) {
        if (Test-Path "Env:$v") {
            $global:__LlmstackSaved[$v] = [Environment]::GetEnvironmentVariable($v)
        }
    }
    Invoke-Expression $code
    $global:__LlmstackKey = $Key
}
function global:__LlmstackLeave {
    foreach ($v in $global:__LlmstackVars) {
        if ($global:__LlmstackSaved.ContainsKey($v)) {
            Set-Item "Env:$v" $global:__LlmstackSaved[$v]
        } else {
            Remove-Item "Env:$v" -ErrorAction SilentlyContinue
        }
    }
    $global:__LlmstackKey = ''
    $global:__LlmstackLabel = ''
}
if (-not $global:__LlmstackHooked) {
    $global:__LlmstackHooked = $true
    $global:__LlmstackOrigPrompt = $function:prompt
    function global:prompt {
        __LlmstackHook
        $p = & $global:__LlmstackOrigPrompt
        if ($global:__LlmstackLabel) {
            $esc = [char]27
            "$esc[38;5;$($global:__LlmstackColor)m$($global:__LlmstackLabel)$esc[0m $p"
        } else { $p }
    }
}
__LlmstackHook
"""

FORCE = {"bash": "_llmstack_hook force", "zsh": "_llmstack_hook force",
         "fish": "__llmstack_hook force", "powershell": "__LlmstackHook -Force"}


def _family(shell: str) -> str:
    return "powershell" if shell in ("pwsh", "powershell") else shell


def hook(shell: str) -> str:
    """The code ``activate`` prints for ``shell``."""
    shell = _family(shell)
    if shell == "powershell":
        me = " ".join(_ps_quote(a) for a in (sys.executable, "-m", "llmstack"))
        return _PS_HOOK.replace("@LLMSTACK@", me).replace(
            "@PSVARS@", ", ".join(_ps_quote(v) for v in MANAGED))
    quote = _fish_quote if shell == "fish" else _sh_quote
    me = " ".join(quote(a) for a in (sys.executable, "-m", "llmstack"))
    if shell == "fish":
        return _FISH_HOOK.replace("@LLMSTACK@", me).replace("@VARS@", " ".join(MANAGED))
    body = _POSIX_HOOK.replace("@SHELL@", shell).replace("@LLMSTACK@", me)
    body = body.replace("@VARS@", " ".join(MANAGED))
    return body + (_BASH_INSTALL if shell == "bash" else _ZSH_INSTALL)


def detect_shell(settings: Settings) -> str:
    """The user's shell family from ``$LLMSTACK_SHELL`` / ``$SHELL`` (bash if unknown)."""
    name = Path(settings.shell).name.removesuffix(".exe")
    return _family(name) if name in SHELLS else "bash"


def activate(shell: str, env_root: Path | None, settings: Settings) -> str:
    """``activate``'s stdout: the hook, or (``--env ROOT``, used by the hook) the variables."""
    if env_root is None:
        return hook(shell)
    project = project_at(env_root.resolve(), settings)
    if not project.state.is_dir():
        raise UserError(f"not an llmstack project: {project.root} has no .llmstack/")
    return env_code(_family(shell), project)


FAILED = {"bash": "(exit {code})", "zsh": "(exit {code})", "fish": "false",
          "powershell": "$global:LASTEXITCODE = {code}"}
"""A last line that fails with ``code`` without leaving the shell."""


def reload_code(family: str, failed: int = 0) -> str:
    """The code that re-activates the project of the calling shell (of ``family``); when the
    reload ``failed`` (its exit status), the code's last line fails, so ``eval`` does too."""
    code = hook(family) + FORCE[family] + "\n"
    return code + (FAILED[family].format(code=failed) + "\n" if failed else "")


def _activate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS)
    parser.add_argument("--env", type=Path, metavar="ROOT", help=argparse.SUPPRESS)


def _activate(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(activate(args.shell, args.env, settings))
    return 0


def _reload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shell", choices=SHELLS, help="shell family (default: from $SHELL)")


def _reload(args: argparse.Namespace, settings: Settings) -> int:
    """Ask the running stack to re-read models.ini, re-render opencode.json / AGENTS.md, then
    print the shell code (ending in a failure when either failed, which is then raised)."""
    from ..project.daemon import reload_stack
    from .install import refresh

    project = find_project(settings)
    if not project.state.is_dir():
        raise UserError("not in an llmstack project (no .llmstack/ here or above)")
    failure = None
    try:
        reload_stack(project.root, settings.auth_headers)
        refresh(project, settings)
    except UserError as exc:
        failure = exc
    if sys.stdout.isatty():
        print('[=] to refresh this shell too: eval "$(llmstack reload)"', file=sys.stderr)
    else:
        family = _family(args.shell or detect_shell(settings))
        sys.stdout.write(reload_code(family, failure.code if failure else 0))
    if failure is not None:
        raise failure
    return 0


COMMANDS = {
    "activate": Command(_activate, "Print a hook that wires every project you cd into: exports "
                                   "OPENCODE_CONFIG, LLMSTACK_WORK_DIR, LLMSTACK_CHANNEL, "
                                   "LLMSTACK_MODELS_INI, LLMSTACK_BASE_URL …, prefixes the "
                                   "prompt with [llmstack:<project>], and restores everything "
                                   "on leaving. bash/zsh: eval \"$(llmstack activate zsh)\" in "
                                   "~/.zshrc; fish: llmstack activate fish | source; PowerShell: "
                                   "llmstack activate powershell | Out-String | "
                                   "Invoke-Expression.", _activate_arguments),
    "reload": Command(_reload, 'For eval "$(llmstack reload)": prints shell code that '
                               "re-activates this project in the calling shell (its env, "
                               "prompt and hook), and asks the running stack, if any, to re-read "
                               "models.ini (POST /reload; messages on stderr). Printed to a "
                               "terminal, it only reloads the stack.", _reload_arguments),
}
