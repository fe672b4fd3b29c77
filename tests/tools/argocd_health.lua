-- Runs an Argo CD health check the way Argo CD runs it (util/lua/lua.go), in a real Lua 5.4.
--
--   lua5.4 argocd_health.lua SCRIPT OBJECTS MODE
--
-- SCRIPT is the health.lua to run; OBJECTS a Lua chunk that returns a list of objects (every
-- JSON number a float, as Argo CD's decodeValue hands them over); MODE "safe" gives the script
-- what Argo CD gives a check from argocd-cm without useOpenLibs (the base, table and package
-- libraries and an os with time and date only: no string, math, io or debug, not even through
-- require, and strings without methods), "open" every standard library (useOpenLibs: true).
-- Each object gets a fresh environment, as each check gets a fresh LState, and an instruction
-- budget in place of Argo CD's one-second timeout.
--
-- Prints one JSON line per object: {"status": ..., "message": ..., "globals": [...]} with the
-- global names the script left behind, or {"error": ...}.

local script_path, objects_path, mode = arg[1], arg[2], arg[3]
assert(mode == "safe" or mode == "open", "MODE must be safe or open")
local handle = assert(io.open(script_path, "rb"))
local source = handle:read("a")
handle:close()
local objects = dofile(objects_path)

local string_metatable = getmetatable("")
local BUDGET = 10000000 -- instructions: a loop that does not end is an error, not a hang

local function json_string(value)
  if value == nil then
    return '""'
  end
  local escaped = string.gsub(tostring(value), '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. escaped .. '"'
end

local function safe_environment()
  local env = {}
  for _, name in ipairs({"assert", "error", "getmetatable", "ipairs", "load", "next", "pairs",
                         "pcall", "print", "rawequal", "rawget", "rawlen", "rawset", "select",
                         "setmetatable", "tonumber", "tostring", "type", "xpcall",
                         "_VERSION"}) do
    env[name] = _G[name]
  end
  env.table = table
  env.os = {time = os.time, date = os.date}
  env._G = env
  -- The package library as gopher-lua has it with only these opened: require finds what is
  -- loaded (the safe os among it) and nothing else (no string, math, io or debug to load).
  local loaded = {_G = env, table = env.table, os = env.os}
  env.package = {loaded = loaded, preload = {}}
  loaded.package = env.package
  env.require = function(name)
    local found = loaded[name]
    if found == nil then
      error("module '" .. tostring(name) .. "' not found", 2)
    end
    return found
  end
  return env
end

local function open_environment()
  local env = {}
  for name, value in pairs(_G) do
    env[name] = value
  end
  env._G = env
  return env
end

local function evaluate(object)
  local env = mode == "safe" and safe_environment() or open_environment()
  env.obj = object
  local baseline = {}
  for name in pairs(env) do
    baseline[name] = true
  end
  local chunk, problem = load(source, "=health.lua", "t", env)
  if chunk == nil then
    return nil, problem
  end
  if mode == "safe" then
    debug.setmetatable("", nil)
  end
  local thread = coroutine.create(chunk)
  debug.sethook(thread, function() error("instruction budget exhausted") end, "", BUDGET)
  local ok, result = coroutine.resume(thread)
  debug.setmetatable("", string_metatable)
  if not ok then
    return nil, result
  end
  if type(result) ~= "table" then
    return nil, "expect table output from Lua script, not " .. type(result)
  end
  local left = {}
  for name in pairs(env) do
    if not baseline[name] then
      table.insert(left, json_string(name))
    end
  end
  table.sort(left)
  return result, left
end

for _, object in ipairs(objects) do
  local result, extra = evaluate(object)
  if result == nil then
    print('{"error": ' .. json_string(extra) .. '}')
  else
    print('{"status": ' .. json_string(result.status) .. ', "message": ' ..
          json_string(result.message) .. ', "globals": [' .. table.concat(extra, ", ") .. ']}')
  end
end
